// Calls in the browser: the signaling socket (API.md's protocol), one
// RTCPeerConnection per call with the browser's own WebRTC, and the short
// authentication string exchanged commit-then-reveal as the softphone does.

import { commitment, fingerprintInSdp, fromHex, hex, nonce, revealMatches, sas } from "/sas.js";

const $ = (id) => document.getElementById(id);

let api = null;          // { token(), call(method, path, body) } from app.js
let socket = null;
let nextId = 0;
const waiting = new Map(); // message id -> { resolve, reject }
let call = null;         // the call in progress, or ringing

/** Starts signaling for the signed-in session. */
export function startCalls(session) {
  api = session;
  connect();
  showHistory();
  showSettings();
  showBlocked();
}

async function showSettings() {
  try {
    const settings = await api.call("GET", "/v1/me/settings");
    $("calls-from").value = settings.calls_from;
    $("hide-address").checked = settings.p2p === "never";
  } catch {
    // Shown as they were.
  }
}

$("settings-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { calls_from: $("calls-from").value, p2p: $("hide-address").checked ? "never" : "always" };
  try {
    await api.call("PATCH", "/v1/me/settings", body);
    $("call-message").textContent = "Settings saved.";
  } catch (error) {
    $("call-message").textContent = error.message || "The settings could not be saved.";
  }
});

async function showBlocked() {
  try {
    const page = await api.call("GET", "/v1/me/blocked?limit=200");
    const items = page.items.map((entry) => {
      const item = document.createElement("li");
      const who = document.createElement("span");
      who.textContent = entry.account_id;
      const unblock = document.createElement("button");
      unblock.type = "button";
      unblock.textContent = "Unblock";
      unblock.setAttribute("aria-label", `Unblock ${entry.account_id}`);
      unblock.addEventListener("click", async () => {
        await api.call("DELETE", `/v1/me/blocked/${entry.account_id}`).catch(() => {});
        showBlocked();
      });
      item.append(who, unblock);
      return item;
    });
    $("blocked").replaceChildren(...items);
  } catch {
    // Shown as it was.
  }
}

const DIRECTIONS = { outgoing: "Outgoing", incoming: "Incoming", missed: "Missed" };

/** My recent calls, newest first: missed ones say so. */
async function showHistory() {
  try {
    const page = await api.call("GET", "/v1/calls/history?limit=20");
    const items = page.items.map((record) => {
      const item = document.createElement("li");
      item.dataset.direction = record.direction;
      const what = document.createElement("span");
      const when = new Date(record.started_at).toLocaleString();
      what.textContent = `${DIRECTIONS[record.direction] || record.direction} · ${when}`;
      const how = document.createElement("span");
      const seconds = record.duration_s || 0;
      const rated = record.rating ? ` · rated ${record.rating}` : "";
      how.textContent = record.direction === "missed" ? "missed" : `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}${rated}`;
      const block = document.createElement("button");
      block.type = "button";
      block.textContent = "Block";
      block.setAttribute("aria-label", `Block ${record.peer}`);
      block.addEventListener("click", async () => {
        await api.call("PUT", `/v1/me/blocked/${record.peer}`).catch(() => {});
        showBlocked();
      });
      item.append(what, how, block);
      return item;
    });
    $("call-history").replaceChildren(...items);
  } catch {
    // The list stays as it was; the next call refreshes it.
  }
}

/** Ends signaling (signing out). */
export function stopCalls() {
  if (call) endCall("Call ended.");
  api = null;
  if (socket) socket.close(1000);
  socket = null;
}

/** A fresh access token: sent on the open socket before the old one expires. */
export function renewToken(token) {
  if (socket && socket.readyState === WebSocket.OPEN) request("reauth", { token }).catch(() => {});
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/v1/calls/ws`);
  socket.addEventListener("open", () => {
    request("auth", { token: api.token() }).then(resumeCall).catch(() => {});
  });
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    for (const { reject } of waiting.values()) reject(new Error("the connection closed"));
    waiting.clear();
    // Come back while signed in (a dropped network, a restarted server).
    if (api) setTimeout(() => api && connect(), 1000);
  });
}

function request(type, fields) {
  const id = `m${++nextId}`;
  socket.send(JSON.stringify({ v: 1, type, id, ...fields }));
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

function handle(message) {
  if (message.type === "ack" || message.type === "error") {
    const pending = waiting.get(message.id);
    if (!pending) return;
    waiting.delete(message.id);
    if (message.type === "ack") pending.resolve(message);
    else pending.reject(Object.assign(new Error(message.message), { code: message.code }));
    return;
  }
  const handlers = {
    incoming: onIncoming,
    ringing: () => call && say("Ringing…"),
    answered: onAnswered,
    answered_elsewhere: () => endCall("Answered on another device."),
    candidates: onCandidates,
    negotiate: onNegotiate,
    sas_reveal: onReveal,
    hangup: (event) => call && call.id === event.call_id && endCall(HANGUPS[event.reason] || "Call ended."),
  };
  const handler = handlers[message.type];
  if (handler && (!call || !message.call_id || message.call_id === call.id)) handler(message);
}

/** After a reconnect mid-call: take the call up again; the caller restarts ICE. */
async function resumeCall() {
  if (!call || !call.answered) return;
  try {
    await request("resume", { call_id: call.id });
    say("In call (reconnected)");
    restartIce();
  } catch (error) {
    endCall("The connection was lost.");
  }
}

/** The caller restarts ICE (Chromium keeps its DTLS role only that way), and
 * offers again until the callee answers: the server drops an offer sent
 * before the callee has resumed. */
async function restartIce() {
  if (!call || call.role !== "caller" || !call.pc || call.restarting) return;
  call.restarting = true;
  const restarting = call;
  try {
    await restarting.pc.setLocalDescription(await restarting.pc.createOffer({ iceRestart: true }));
  } catch {
    restarting.restarting = false;
    return;
  }
  const send = () => {
    if (call !== restarting || restarting.pc.signalingState !== "have-local-offer") return;
    request("negotiate", { call_id: restarting.id, sdp: restarting.pc.localDescription.sdp, kind: "offer" }).catch(() => {});
    restarting.restartTimer = setTimeout(send, 3000);
  };
  send();
}

async function onNegotiate(event) {
  if (!call || !call.pc) return;
  if (event.kind === "offer" && call.role === "callee") {
    await call.pc.setRemoteDescription({ type: "offer", sdp: event.sdp });
    const answer = await call.pc.createAnswer();
    await call.pc.setLocalDescription(answer);
    request("negotiate", { call_id: call.id, sdp: answer.sdp, kind: "answer" }).catch(() => {});
  } else if (event.kind === "answer" && call.role === "caller" && call.pc.signalingState === "have-local-offer") {
    clearTimeout(call.restartTimer);
    await call.pc.setRemoteDescription({ type: "answer", sdp: event.sdp });
    call.restarting = false;
    call.restarts = (call.restarts || 0) + 1;
    $("connection").dataset.restarts = String(call.restarts);
  }
}

const HANGUPS = {
  user_hangup: "The other side hung up.",
  rejected: "The call was declined.",
  busy: "The other side is busy.",
  invite_timeout: "No answer.",
  unavailable: "The other side is not online.",
  lost_connection: "The connection was lost.",
  ice_failed: "The call could not connect.",
  glare: "You were calling each other; the other call went through.",
  server_shutdown: "The server is restarting. Call again in a moment.",
};

const REFUSALS = {
  callee_not_found: "Nobody uses Courier with that number.",
  callee_not_accepting: "That person is not taking calls from you.",
  callee_busy: "That person is on another call.",
  already_in_call: "You are in a call already.",
};

function say(text) {
  $("call-state").textContent = text;
}

async function peer(icePolicy) {
  const { ice_servers: iceServers } = await api.call("GET", "/v1/calls/ice-servers");
  const config = { iceServers };
  if (icePolicy === "relay") config.iceTransportPolicy = "relay";
  const connection = new RTCPeerConnection(config);
  connection.addEventListener("icecandidate", (event) => {
    // No end-of-candidates marker goes out: the other side does not need it.
    if (!event.candidate || !event.candidate.candidate || !call) return;
    request("candidates", { call_id: call.id, candidates: [event.candidate.toJSON()] }).catch(() => {});
  });
  connection.addEventListener("track", (event) => {
    $("remote-audio").srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  connection.addEventListener("connectionstatechange", () => {
    if (!call || call.pc !== connection) return;
    $("connection").dataset.state = connection.connectionState;
    if (connection.connectionState === "connected" && !call.started) connected();
    if (connection.connectionState === "failed" && !call.started) hangUp("ice_failed", "The call could not connect.");
  });
  connection.addEventListener("iceconnectionstatechange", () => {
    // The network changed under the call: the caller restarts ICE if the
    // path has not come back by itself within two seconds.
    if (connection.iceConnectionState !== "disconnected" && connection.iceConnectionState !== "failed") return;
    setTimeout(() => {
      if (call && call.pc === connection && ["disconnected", "failed"].includes(connection.iceConnectionState)) restartIce();
    }, 2000);
  });
  return connection;
}

async function microphone() {
  // Asked for before the connection exists: Chromium shows its real
  // addresses to ICE only once the page may use the microphone.
  return navigator.mediaDevices.getUserMedia({ audio: true });
}

/** The ring of an incoming call: two short tones every two seconds. */
let ringer = null;

function ring(on) {
  if (ringer) {
    clearInterval(ringer.timer);
    ringer.context.close().catch(() => {});
    ringer = null;
  }
  $("incoming").dataset.ringing = String(on);
  if (!on) return;
  const context = new AudioContext();
  const beep = () => {
    for (const [start, hz] of [[0, 440], [0.45, 480]]) {
      const tone = context.createOscillator();
      const gain = context.createGain();
      tone.frequency.value = hz;
      gain.gain.value = 0.15;
      tone.connect(gain).connect(context.destination);
      tone.start(context.currentTime + start);
      tone.stop(context.currentTime + start + 0.35);
    }
  };
  context.resume().catch(() => {});
  beep();
  ringer = { context, timer: setInterval(beep, 2000) };
}

function showCall() {
  ring(false);
  $("rate-form").hidden = true;
  $("call-form").hidden = true;
  $("incoming").hidden = true;
  $("in-call").hidden = false;
  $("sas").textContent = "…";
  delete $("sas").dataset.symbols;
  $("call-quality").textContent = "";
  $("pay-peer").hidden = true;
  offerPayment(call);
  $("connection").textContent = "Connecting…";
  for (const key of ["kind", "local", "remote", "restarts", "state"]) delete $("connection").dataset[key];
}

$("call-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (call) return;
  const callee = $("callee").value.replace(/[^+0-9]/g, "");
  call = { id: crypto.randomUUID(), role: "caller", peer: callee, nonce: nonce(), candidates: [], dialed: Date.now() };
  // The answer may come before the invite's ack (the server acknowledges
  // the invite once its record is written, and the callee need not wait
  // for that): it waits for the offer to be set, which waits for the ack.
  let offerSet;
  call.localSet = new Promise((resolve) => (offerSet = resolve));
  showCall();
  say("Calling…");
  try {
    call.stream = await microphone();
    call.pc = await peer("all");
    call.stream.getTracks().forEach((track) => call.pc.addTrack(track, call.stream));
    call.offer = await call.pc.createOffer();
    const ack = await request("invite", {
      call_id: call.id,
      callee,
      sdp: call.offer.sdp,
      sas_commit: await commitment(call.nonce),
    });
    if (ack.ice_policy === "relay") {
      call.pc.setConfiguration({ ...call.pc.getConfiguration(), iceTransportPolicy: "relay" });
    }
    // Only now does gathering start, under the call's policy. The answer
    // may arrive before this completes: it waits for it (onAnswered).
    const setting = call.pc.setLocalDescription(call.offer);
    offerSet(setting);
    await setting;
  } catch (error) {
    endCall(REFUSALS[error.code] || error.message || "The call could not be placed.");
  }
});

async function onIncoming(event) {
  if (call) return; // the server answers busy for us
  call = {
    id: event.call_id,
    role: "callee",
    peer: event.caller,
    dialed: Date.now(),
    offerSdp: event.sdp,
    icePolicy: event.ice_policy,
    commit: event.sas_commit || null,
    nonce: nonce(),
    candidates: [],
  };
  $("incoming-text").textContent = `Incoming call from ${event.caller}`;
  $("incoming").hidden = false;
  ring(true);
  $("call-form").hidden = true;
  request("ringing", { call_id: call.id }).catch(() => {});
}

$("answer").addEventListener("click", async () => {
  if (!call || call.role !== "callee") return;
  showCall();
  say("Connecting…");
  try {
    call.stream = await microphone();
    call.pc = await peer(call.icePolicy);
    await call.pc.setRemoteDescription({ type: "offer", sdp: call.offerSdp });
    call.stream.getTracks().forEach((track) => call.pc.addTrack(track, call.stream));
    const answer = await call.pc.createAnswer();
    await call.pc.setLocalDescription(answer);
    call.answerSdp = answer.sdp;
    call.answered = true;
    for (const candidate of call.candidates.splice(0)) await call.pc.addIceCandidate(candidate).catch(() => {});
    await request("answer", { call_id: call.id, sdp: answer.sdp, sas_nonce: hex(call.nonce) });
  } catch (error) {
    hangUp("user_hangup", error.message || "The call could not be answered.");
  }
});

$("decline").addEventListener("click", () => {
  if (!call) return;
  request("reject", { call_id: call.id }).catch(() => {});
  endCall("");
});

async function onAnswered(event) {
  if (!call || call.role !== "caller") return;
  const answered = call;
  answered.answered = true;
  say("Connecting…");
  try {
    await answered.localSet;
  } catch {
    return; // the call could not be placed, and says so
  }
  if (call !== answered) return;
  await answered.pc.setRemoteDescription({ type: "answer", sdp: event.sdp });
  for (const candidate of call.candidates.splice(0)) await call.pc.addIceCandidate(candidate).catch(() => {});
  if (event.sas_nonce) {
    await showSas(call.pc.localDescription.sdp, event.sdp, call.nonce, fromHex(event.sas_nonce));
    request("sas_reveal", { call_id: call.id, nonce: hex(call.nonce) }).catch(() => {});
  }
}

async function onCandidates(event) {
  if (!call) return;
  const ready = call.pc && call.pc.remoteDescription;
  for (const candidate of event.candidates) {
    if (ready) await call.pc.addIceCandidate(candidate).catch(() => {});
    else call.candidates.push(candidate);
  }
}

async function onReveal(event) {
  if (!call || call.role !== "callee") return;
  const callerNonce = fromHex(event.nonce);
  if (!callerNonce || !call.commit || !(await revealMatches(call.commit, callerNonce))) {
    $("sas").textContent = "Warning: the security code cannot be trusted on this call (the other side's value changed).";
    return;
  }
  await showSas(call.offerSdp, call.answerSdp, callerNonce, call.nonce);
}

async function showSas(callerSdp, calleeSdp, callerNonce, calleeNonce) {
  const callerFingerprint = fingerprintInSdp(callerSdp);
  const calleeFingerprint = fingerprintInSdp(calleeSdp);
  if (!callerFingerprint || !calleeFingerprint) {
    $("sas").textContent = "Warning: no security code for this call.";
    return;
  }
  const emojis = await sas({ callId: call.id, callerFingerprint, calleeFingerprint, callerNonce, calleeNonce });
  $("sas").textContent = emojis.map((e) => `${e.symbol} ${e.name}`).join(" · ");
  $("sas").dataset.symbols = emojis.map((e) => e.symbol).join(" ");
}

async function connected() {
  say("In call");
  call.started = Date.now();
  call.setupMs = call.started - call.dialed;
  call.timer = setInterval(() => {
    const seconds = Math.floor((Date.now() - call.started) / 1000);
    $("call-timer").textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }, 1000);
  $("connection").textContent = "Connected";
  showPath(call);
  showFigures(call);
}

/** Direct or relayed, from the selected candidate pair: shown once the
 * connection has one, and again whenever ICE selects another (a restart, a
 * network change). Chromium may say "connected" a moment before it names
 * the pair: asked again every half second until it does. */
function showPath(current) {
  if (call !== current) return;
  const ice = iceTransport(current.pc);
  if (ice && !current.watchingPath) {
    current.watchingPath = true;
    ice.addEventListener("selectedcandidatepairchange", () => showPath(current));
  }
  readPath(current.pc, ice).then((path) => {
    if (call !== current) return;
    if (!path) {
      clearTimeout(current.pathTimer);
      current.pathTimer = setTimeout(() => showPath(current), 500);
      return;
    }
    const kind = path.local === "relay" || path.remote === "relay" ? "relay" : "direct";
    current.candidateType = path.local;
    const shown = $("connection");
    shown.dataset.local = path.local;
    shown.dataset.remote = path.remote;
    shown.dataset.kind = kind;
    shown.textContent = kind === "relay" ? "Relayed through a TURN server" : "Direct (peer to peer)";
  });
}

function iceTransport(pc) {
  const sender = pc.getSenders().find((s) => s.transport);
  return sender ? sender.transport.iceTransport : null;
}

/** The selected pair's candidate types, or null while there is none. */
async function readPath(pc, ice) {
  const selected = ice && ice.getSelectedCandidatePair ? ice.getSelectedCandidatePair() : null;
  if (selected && selected.local && selected.remote && selected.local.type && selected.remote.type) {
    return { local: selected.local.type, remote: selected.remote.type };
  }
  const stats = await pc.getStats();
  let path = null;
  stats.forEach((report) => {
    if (report.type !== "transport" || !report.selectedCandidatePairId) return;
    const pair = stats.get(report.selectedCandidatePairId);
    const local = pair && stats.get(pair.localCandidateId);
    const remote = pair && stats.get(pair.remoteCandidateId);
    if (local && remote) path = { local: local.candidateType, remote: remote.candidateType };
  });
  return path;
}

$("mute").addEventListener("click", () => {
  if (!call || !call.stream) return;
  const muted = $("mute").getAttribute("aria-pressed") !== "true";
  call.stream.getAudioTracks().forEach((track) => { track.enabled = !muted; });
  $("mute").setAttribute("aria-pressed", String(muted));
});

$("hangup").addEventListener("click", () => hangUp("user_hangup", "Call ended."));

// Paying the person on the call: the wallet's form, with them as the recipient.
$("pay-peer").addEventListener("click", () => {
  if (!call) return;
  $("recipient").value = call.peer;
  $("amount").focus();
});

/** The call's figures so far: round trip, jitter and loss of what arrives. */
async function figuresOf(current) {
  const figures = {};
  const stats = await current.pc.getStats();
  stats.forEach((report) => {
    if (report.type === "remote-inbound-rtp" && report.roundTripTime !== undefined) {
      figures.rtt_ms = report.roundTripTime * 1000;
    }
    if (report.type === "inbound-rtp" && report.kind === "audio") {
      if (report.jitter !== undefined) figures.jitter_ms = report.jitter * 1000;
      const received = (report.packetsReceived || 0) + Math.max(0, report.packetsLost || 0);
      if (received > 0) figures.packet_loss_pct = (100 * Math.max(0, report.packetsLost || 0)) / received;
    }
  });
  return figures;
}

/** The figures on the call screen, every two seconds while the call lasts. */
async function showFigures(current) {
  if (call !== current) return;
  try {
    const figures = await figuresOf(current);
    const parts = [];
    if (figures.rtt_ms !== undefined) parts.push(`round trip ${Math.round(figures.rtt_ms)} ms`);
    if (figures.jitter_ms !== undefined) parts.push(`jitter ${Math.round(figures.jitter_ms)} ms`);
    if (figures.packet_loss_pct !== undefined) parts.push(`loss ${figures.packet_loss_pct.toFixed(1)} %`);
    if (call === current && parts.length) $("call-quality").textContent = parts.join(" · ");
  } catch {
    // Shown as it was; the next turn tries again.
  }
  if (call === current) current.figuresTimer = setTimeout(() => showFigures(current), 2000);
}

/** "Send money" is offered only for someone I could pay now (my region). */
async function offerPayment(current) {
  try {
    await api.call("GET", `/v1/transfers/quote?to=${encodeURIComponent(current.peer)}`);
    if (call === current) $("pay-peer").hidden = false;
  } catch {
    // Another region, no wallet here, or not reachable now: nothing offered.
  }
}

/** The call's figures, posted to the call's record as it ends. */
async function postStats(ending) {
  if (!ending.pc || !ending.started) return;
  let figures = {};
  try {
    figures = await figuresOf(ending);
  } catch {
    // The connection is gone; what is known of the call still goes.
  }
  Object.assign(figures, { candidate_type: ending.candidateType, setup_ms: ending.setupMs });
  for (const name of Object.keys(figures)) if (figures[name] === undefined) delete figures[name];
  await api.call("POST", `/v1/calls/${ending.id}/stats`, figures).catch(() => {});
}

let rating = null; // the call that may be rated now

$("rate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!rating) return;
  const problems = [...$("rate-form").querySelectorAll("input[name=problem]:checked")].map((box) => box.value);
  try {
    await api.call("POST", `/v1/calls/${rating}/rating`, { rating: Number($("rating").value), problems });
    $("call-message").textContent = "Thank you for rating the call.";
    $("rate-form").hidden = true;
    rating = null;
    showHistory();
  } catch (error) {
    $("call-message").textContent = error.message || "The rating could not be saved.";
  }
});

function hangUp(reason, text) {
  if (call) request("hangup", { call_id: call.id, reason }).catch(() => {});
  endCall(text);
}

function endCall(text) {
  ring(false);
  const ending = call;
  call = null;
  if (ending) {
    clearInterval(ending.timer);
    clearTimeout(ending.restartTimer);
    clearTimeout(ending.pathTimer);
    clearTimeout(ending.figuresTimer);
    if (ending.stream) ending.stream.getTracks().forEach((track) => track.stop());
    postStats(ending).finally(() => {
      if (ending.pc) ending.pc.close();
      showHistory();
    });
    if (ending.started) {
      rating = ending.id;
      $("rate-form").reset();
      $("rate-form").hidden = false;
    }
  }
  $("incoming").hidden = true;
  $("in-call").hidden = true;
  $("call-form").hidden = false;
  $("mute").setAttribute("aria-pressed", "false");
  $("call-timer").textContent = "0:00";
  $("call-message").textContent = text;
}
