//! Calls across real networks: two softphones, each in a home network behind
//! a NAT router of its own (network namespaces and nftables, see
//! `support::netns`), with `courier serve` and its embedded relay on a
//! "public" segment. Run as root, one at a time (the `network` test group).

use crate::calls_media::{
    ALICE, BOB, Running, Softphone, assert_heard_each_other, assert_same_sas, call, seconds_of_tone,
};
use crate::support::netns::{Nat, Net, PUBLIC_IP, PUBLIC_RANGE};
use crate::support::{Db, Server};
use serde_json::{Value, json};

/// `courier serve` on the public segment, its relay allowed to reach the
/// segment's addresses (the routers') and nothing else that is not public.
async fn public_server() -> Server {
    let listen = format!("{PUBLIC_IP}:0");
    Server::start_with(Db::Sqlite, &["--listen", &listen, "--turn-listen", &listen, "--turn-allow-peer", PUBLIC_RANGE])
        .await
}

/// Alice in home 1 and Bob in home 2, signed in.
async fn parties(net: &Net, server: &Server) -> (Softphone, Softphone) {
    let alice = Softphone::login(&server.url, server, ALICE).await.in_namespace(net.home_ns(1), Net::home_ip(1));
    let bob = Softphone::login(&server.url, server, BOB).await.in_namespace(net.home_ns(2), Net::home_ip(2));
    (alice, bob)
}

/// Seconds of the other's tone Alice (hearing 880 Hz) and Bob (440 Hz) recorded.
fn heard_by(alice: &Softphone, bob: &Softphone) -> (f64, f64) {
    (seconds_of_tone(&alice.recording(), 880.0), seconds_of_tone(&bob.recording(), 440.0))
}

/// Each side heard the other's tone for at least `least` seconds.
fn assert_heard_at_least(alice: &Softphone, bob: &Softphone, least: f64, context: impl std::fmt::Display) {
    let (at_alice, at_bob) = heard_by(alice, bob);
    assert!(at_alice >= least && at_bob >= least, "heard {at_alice} s and {at_bob} s, not {least} s:\n{context}");
}

/// Bob answers, Alice dials him; each side's report and log once both ended.
async fn call_for(alice: &Softphone, bob: &Softphone, url: &str, seconds: f64) -> ((Value, String), (Value, String)) {
    call_doing(alice, bob, url, seconds, async |_| {}).await
}

/// As [`call_for`], doing `during` with the caller's softphone once it dials.
async fn call_doing(
    alice: &Softphone,
    bob: &Softphone,
    url: &str,
    seconds: f64,
    during: impl AsyncFnOnce(&Running),
) -> ((Value, String), (Value, String)) {
    let answering = bob.spawn_for(url, &["answer", "--auto", "--wait-s", "60"], 880, seconds);
    answering.wait_for("waiting for a call").await;
    let dialing = alice.spawn_for(url, &["dial", BOB], 440, seconds);
    during(&dialing).await;
    let ((a, _, a_log), (b, _, b_log)) = (dialing.ended().await, answering.ended().await);
    ((a, a_log), (b, b_log))
}

/// The loss levels (percent) environment variable `name` lists, comma-separated, or `default`.
fn loss_levels(name: &str, default: &str) -> Vec<u32> {
    let levels = std::env::var(name).unwrap_or_else(|_| default.into());
    levels.split(',').map(|level| level.trim().parse().unwrap_or_else(|_| panic!("{name}: {levels:?}"))).collect()
}

fn path(report: &Value) -> (String, String) {
    let kind = |field: &str| report[field].as_str().unwrap_or("none").to_owned();
    (kind("candidate_type"), kind("remote_candidate_type"))
}

/// Neither end relays, and the far end is reached at a reflexive address
/// (its home address is not routable from here). webrtc-rs names a pair's
/// local end by its base, the host candidate the NAT maps.
fn direct((local, remote): &(String, String)) -> bool {
    local != "relay" && (remote == "srflx" || remote == "prflx")
}

/// Behind port-preserving NAT on both sides, the call goes direct: each
/// side's server-reflexive address (learned from the embedded relay's STUN)
/// reaches the other, and the audio flows both ways without the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_port_preserving_nat_the_call_goes_direct() {
    let net = Net::build(&[Nat::PortPreserving, Nat::PortPreserving]);
    let server = public_server().await;
    let (alice, bob) = parties(&net, &server).await;
    let (a, b) = call(&alice, &server.url, &bob, &server.url).await;
    assert_same_sas(&a, &b);
    for report in [&a, &b] {
        let pair = path(report);
        assert!(direct(&pair), "not direct ({pair:?}): {report}");
    }
    assert_heard_each_other(&alice, &bob, (&a, &b));
    println!("set-up: caller {} ms, callee {} ms", a["setup_ms"], b["setup_ms"]);
    server.finish().await;
}

/// Behind symmetric NAT on both sides, with the policy `all`, no direct
/// path exists: ICE falls back to the relay by itself, and the call
/// carries audio both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_symmetric_nat_the_call_falls_back_to_the_relay() {
    let net = Net::build(&[Nat::Symmetric, Nat::Symmetric]);
    let server = public_server().await;
    let (alice, bob) = parties(&net, &server).await;
    let (a, b) = call(&alice, &server.url, &bob, &server.url).await;
    assert_same_sas(&a, &b);
    for report in [&a, &b] {
        assert_eq!(report["ice_policy"], "all", "{report}");
        let (local, remote) = path(report);
        assert!(local == "relay" || remote == "relay", "not relayed ({local} / {remote}): {report}");
    }
    assert_heard_each_other(&alice, &bob, (&a, &b));
    println!("set-up through the fallback: caller {} ms, callee {} ms", a["setup_ms"], b["setup_ms"]);
    server.finish().await;
}

/// Mid-call, the caller's router moves to another public address, as when
/// a phone changes networks: every mapping it held is gone, the media path
/// and the signaling socket break, and the call comes back through an ICE
/// restart, with audio both ways again, still direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_its_nat_rebinding() {
    const SECONDS: f64 = 20.0;
    let net = Net::build(&[Nat::PortPreserving, Nat::PortPreserving]);
    let server = public_server().await;
    let (alice, bob) = parties(&net, &server).await;
    let ((a, _), (b, _)) = call_doing(&alice, &bob, &server.url, SECONDS, async |dialing| {
        dialing.wait_for("first audio").await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        net.rebind(1, "198.18.200.21");
    })
    .await;
    assert!(a["ice_restarts"].as_u64().is_some_and(|n| n >= 1), "no ICE restart: {a}");
    assert_eq!((&a["end_reason"], &b["end_reason"]), (&json!("user_hangup"), &json!("user_hangup")), "{a}\n{b}");
    let pair = path(&a);
    assert!(direct(&pair), "not direct after the restart ({pair:?}): {a}");
    // Heard for most of the call: all but the break and its repair.
    assert_heard_at_least(&alice, &bob, SECONDS - 8.0, format!("{a}\n{b}"));
    server.finish().await;
}

/// Loss at 0, 5, 10 and 15 % in each direction (at the caller's router),
/// in force from before each call: every call sets up (ICE, DTLS and the
/// SAS exchange retransmit until they succeed) and carries audio both ways.
/// `COURIER_TEST_LOSS_CALLS` calls per level (2 by default; BENCHMARKS.md's
/// table comes from 20), at the levels `COURIER_TEST_LOSS_LEVELS` names
/// (`0,5,10,15` by default); one line of figures per level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_set_up_and_carry_audio_under_loss() {
    // Long enough for both attempts to set the call up again (at 4 and 8 s).
    const SECONDS: f64 = 14.0;
    let calls: usize = std::env::var("COURIER_TEST_LOSS_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(2);
    let levels = loss_levels("COURIER_TEST_LOSS_LEVELS", "0,5,10,15");
    let net = Net::build(&[Nat::PortPreserving, Nat::PortPreserving]);
    let server = public_server().await;
    let (alice, bob) = parties(&net, &server).await;
    for loss in levels {
        net.set_loss(1, loss, loss);
        let mut setups = Vec::new();
        let (mut concealed, mut recovered, mut heard, mut again) = (0, 0, 0.0, 0);
        for attempt in 1..=calls {
            let ((a, a_log), (b, b_log)) = call_for(&alice, &bob, &server.url, SECONDS).await;
            assert_same_sas(&a, &b);
            let (at_alice, at_bob) = heard_by(&alice, &bob);
            // Connected, with audio both ways (a call set up again after a
            // stalled handshake has lost four seconds of it).
            assert!(
                a["setup_ms"].is_u64() && at_alice >= 2.0 && at_bob >= 2.0,
                "{loss} % loss, call {attempt}: heard {at_alice} s and {at_bob} s of {SECONDS}:\n{a}\n{b}\n\
                 caller:\n{a_log}\ncallee:\n{b_log}"
            );
            setups.push(a["setup_ms"].as_u64().unwrap_or(0));
            again += usize::from(a_log.contains("setting it up again"));
            for report in [&a, &b] {
                concealed += report["concealed_frames"].as_u64().unwrap_or(0);
                recovered += report["recovered_frames"].as_u64().unwrap_or(0);
            }
            heard += (at_alice + at_bob) / 2.0;
        }
        setups.sort_unstable();
        println!(
            "loss {loss} %: {calls} of {calls} calls connected, {again} set up again; set-up p50 {} ms, max {} ms; \
             heard {:.1} s of {SECONDS} s on average; frames concealed {concealed}, recovered from FEC {recovered}",
            setups[setups.len() / 2],
            setups[setups.len() - 1],
            heard / calls as f64,
        );
    }
    server.finish().await;
}

/// The caller's last DTLS flight is lost, every time it is sent, on the
/// first peer connections (webrtc-rs's client does not even send it again
/// when the server repeats its own flight, so one loss can be enough): the
/// call sets its media path up again on new peer connections, with the
/// same certificates (the SAS stands, and neither side warns), and carries
/// audio both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_dtls_handshake_is_set_up_again() {
    const SECONDS: f64 = 10.0;
    const CERTIFICATE: u8 = 11;
    let net = Net::build(&[Nat::PortPreserving, Nat::PortPreserving]);
    let server = public_server().await;
    let (alice, bob) = parties(&net, &server).await;
    net.drop_dtls(1, CERTIFICATE);
    let ((a, a_log), (b, b_log)) = call_doing(&alice, &bob, &server.url, SECONDS, async |dialing| {
        // The first handshake's last flight is dropped, however often it is
        // sent, until the caller sets the call up again; the new one passes.
        for _ in 0..500 {
            if dialing.printed().contains("setting it up again") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(net.dropped(1) > 0, "the caller's last flight never went by");
        net.set_loss(1, 0, 0);
    })
    .await;
    assert!(a_log.contains("setting it up again"), "the caller never set the call up again:\n{a_log}");
    assert!(b_log.contains("setting it up again"), "the callee never set the call up again:\n{b_log}");
    assert_same_sas(&a, &b);
    assert_heard_at_least(&alice, &bob, SECONDS - 6.0, format!("{a}\n{b}\ncaller:\n{a_log}\ncallee:\n{b_log}"));
    server.finish().await;
}

/// Chromium in home 1 (the page, with its own WebRTC) and the softphone in
/// home 2 call each other, each way: behind port-preserving NAT the page's
/// call goes direct, behind symmetric NAT either falls back to the relay by
/// itself; each side hears the other's tone.
///
/// When the page calls, Chromium (controlling) may nominate the relayed pair
/// first and a direct one a moment later; webrtc-rs, controlled, keeps the
/// first pair it was given (it does not follow a renomination), so the
/// page's side of such a call is direct and the softphone's relayed. When
/// the softphone calls, it nominates: both sides direct, or both relayed
/// when Chromium's checks come after the softphone's wait for a direct pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_softphone_call_across_nat() {
    for (nat, relayed) in [(Nat::PortPreserving, false), (Nat::Symmetric, true)] {
        for page_calls in [false, true] {
            page_and_softphone_across(nat, relayed, page_calls).await;
        }
    }
}

async fn page_and_softphone_across(nat: Nat, relayed: bool, page_calls: bool) {
    use crate::browser::{heard_hz, sign_in_page, tone_wav};
    use crate::support::browser::Browser;
    const PAGE: &str = "+79161234567";
    let net = Net::build(&[nat, nat]);
    let server = public_server().await;
    let bob = Softphone::login(&server.url, &server, BOB).await.in_namespace(net.home_ns(2), Net::home_ip(2));
    let browser =
        Browser::with_microphone_in(&net.home_ns(1), &server.url, 360, &tone_wav(server.dir.path(), 440.0)).await;
    sign_in_page(&browser, &server, PAGE).await;
    let running = if page_calls {
        let answering = bob.spawn_for(&server.url, &["answer", "--auto", "--wait-s", "60"], 880, 60.0);
        answering.wait_for("waiting for a call").await;
        browser.type_into("Number to call", BOB).await;
        browser.click("Call").await;
        answering
    } else {
        let dialing = bob.spawn_for(&server.url, &["dial", PAGE], 880, 60.0);
        browser.click("Answer").await;
        dialing
    };
    let case = format!("{nat:?}, the page calls: {page_calls}");
    // The softphone calling nominates; on a loaded machine Chromium's checks
    // may open its NAT after the softphone's wait for a direct pair (1 s)
    // has passed, and the call is relayed: either path, then, but a path.
    let expected = match (relayed, page_calls) {
        (true, _) => "Relayed",
        (false, true) => "Direct",
        (false, false) => "",
    };
    let up = "const c = document.getElementById('connection'); return c.dataset.kind ? 'up: ' + c.textContent : ''";
    let shown = browser.wait_for_script(up, "up: ").await;
    assert!(shown.contains(expected), "{case}: {shown}, not {expected}");
    let pair =
        browser.eval("const c = document.getElementById('connection').dataset; return [c.local, c.remote]").await;
    let heard = heard_hz(&browser).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    browser.click("Hang up").await;
    let b = running.report().await;
    assert!((heard - 880.0).abs() < 30.0, "{case}: the page heard {heard} Hz ({shown}, {pair})");
    let at_bob = seconds_of_tone(&bob.recording(), 440.0);
    assert!(at_bob >= 2.0, "{case}: the softphone heard the page for {at_bob} s: {b}");
    let softphone_pair = path(&b);
    if relayed {
        assert!(softphone_pair.0 == "relay" || softphone_pair.1 == "relay", "{case}: {softphone_pair:?}: {b}");
    } else if !page_calls && shown.contains("Direct") {
        assert!(direct(&softphone_pair), "{case}: the softphone's pair {softphone_pair:?}: {b}");
    }
    println!(
        "{case}: the page showed {shown:?} over {pair}, the softphone {softphone_pair:?}; set-up {} ms",
        b["setup_ms"]
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.finish().await;
}

/// Speech through a call at each loss level in `COURIER_TEST_QUALITY_LEVELS`
/// (`0,10` by default; BENCHMARKS.md's table comes from `0,5,10,15`), set at
/// the caller's router both ways, on one network: softphone to softphone,
/// then page to page, Chromium's own WebRTC with its NetEq jitter buffer as
/// the reference. The far end's recording is scored with PESQ (P.862.2,
/// `scripts/pesq-score`, every whole copy of the sentence it holds); one
/// line per path and level: MOS-LQO, the receiver's jitter-buffer delay and
/// the share of its playout that was concealed.
///
/// The pages' microphone processing (echo cancellation, noise suppression,
/// gain control) is off here, as the softphone has none, so that the two
/// paths differ only in their codec settings, network stacks and jitter
/// buffers; both send Opus at 32 kb/s with in-band FEC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_quality_under_loss_beside_chromium() {
    use crate::browser::sign_in_page;
    use crate::calls_media::{pesq_score, spoken, write_wav};
    use crate::support::browser::Browser;
    const TEXT: &str = "Courier calls are encrypted from one end to the other. \
        Compare the four pictures with the person you are talking to.";
    const PAGE_1: &str = "+79161140003";
    const PAGE_2: &str = "+79161140004";
    let levels = loss_levels("COURIER_TEST_QUALITY_LEVELS", "0,10");
    let net = Net::build(&[Nat::PortPreserving, Nat::PortPreserving]);
    let server = public_server().await;
    let dir = server.dir.path();
    // The sentence with half a second of silence each side: what a page's
    // microphone loops, and what the softphone plays twice after 2 s.
    let speech = spoken(dir, TEXT);
    let unit = dir.join("unit.wav");
    write_wav(&unit, &[&[0; 24_000], &speech, &[0; 24_000]]);
    let unit_s = (speech.len() + 48_000) as f64 / 48_000.0;
    let twice = dir.join("twice.wav");
    write_wav(&twice, &[&[0; 96_000], &[0; 24_000], &speech, &[0; 48_000], &speech, &[0; 24_000]]);

    let (alice, bob) = parties(&net, &server).await;
    let talking = Browser::with_microphone_in(&net.home_ns(1), &server.url, 360, &unit).await;
    let listening =
        Browser::with_microphone_in(&net.home_ns(2), &server.url, 360, &crate::browser::tone_wav(dir, 440.0)).await;
    sign_in_page(&talking, &server, PAGE_1).await;
    sign_in_page(&listening, &server, PAGE_2).await;
    talking.eval(WITHOUT_PROCESSING).await;
    listening.eval(KEEP_PEER_CONNECTIONS).await;

    let mut lines = Vec::new();
    for loss in levels {
        net.set_loss(1, loss, loss);
        // Softphone to softphone: Alice plays the sentence twice, Bob records.
        let seconds = 2.0 + 2.0 * unit_s + 1.5;
        let answering = bob.spawn_for(&server.url, &["answer", "--auto", "--wait-s", "60"], 880, seconds + 5.0);
        answering.wait_for("waiting for a call").await;
        let dialing = alice.spawn_playing(&server.url, &["dial", BOB], twice.to_str().unwrap(), seconds);
        let ((a, _, a_log), (b, _, b_log)) = (dialing.ended().await, answering.ended().await);
        let score = pesq_score(&unit, &bob.recording())
            .unwrap_or_else(|error| panic!("{loss} %: {error}\n{a}\n{b}\ncaller:\n{a_log}\ncallee:\n{b_log}"));
        let received = b["packets_received"].as_u64().unwrap_or(0);
        let concealed = b["concealed_frames"].as_u64().unwrap_or(0);
        lines.push(format!(
            "loss {loss} %, softphone to softphone: MOS-LQO {score:.2}, jitter buffer {} ms, concealed {:.1} % \
             ({} frames recovered from FEC; the sender saw {:.1} % lost and planned FEC for {} %)",
            b["playout_delay_ms"],
            100.0 * concealed as f64 / (received + concealed).max(1) as f64,
            b["recovered_frames"],
            a["remote_loss_pct"].as_f64().unwrap_or(0.0),
            a["fec_planned_pct"],
        ));
        println!("{}", lines.last().unwrap());
        if loss == 0 {
            assert!(score >= 3.0, "MOS-LQO {score} on the clean path:\n{a}\n{b}");
        }

        // Page to page: the talking page calls, the listening page records
        // two lengths of the looped sentence once the call is up.
        talking.type_into("Number to call", PAGE_2).await;
        talking.click("Call").await;
        listening.click("Answer").await;
        let up = "const c = document.getElementById('connection'); return c.dataset.kind ? 'up: ' + c.textContent : ''";
        listening.wait_for_script(up, "up: ").await;
        listening.eval(RECORD).await;
        tokio::time::sleep(std::time::Duration::from_secs_f64(2.0 * unit_s + 0.5)).await;
        let stats = listening.eval_async(RECEIVED).await;
        let recorded = listening.eval(RECORDED).await;
        talking.click("Hang up").await;
        listening.wait_for_script("return document.getElementById('call-message').textContent", "hung up").await;
        let heard = dir.join(format!("page-heard-{loss}.wav"));
        let pcm =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, recorded.as_str().unwrap()).unwrap();
        let samples: Vec<i16> = pcm.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
        write_wav(&heard, &[&samples]);
        let score = pesq_score(&unit, &heard).unwrap_or_else(|error| panic!("{loss} %, pages: {error}: {stats}"));
        let per = |field: &str, count: &str| {
            stats[field].as_f64().unwrap_or(0.0) / stats[count].as_f64().unwrap_or(1.0).max(1.0)
        };
        lines.push(format!(
            "loss {loss} %, page to page: MOS-LQO {score:.2}, jitter buffer {:.0} ms, concealed {:.1} %",
            1_000.0 * per("jitterBufferDelay", "jitterBufferEmittedCount"),
            100.0 * per("concealedSamples", "totalSamplesReceived"),
        ));
        println!("{}", lines.last().unwrap());
        if loss == 0 {
            assert!(score >= 3.0, "MOS-LQO {score} between the pages on the clean path: {stats}");
        }
    }
    println!("{}", lines.join("\n"));
    for browser in [&talking, &listening] {
        assert_eq!(browser.console_errors().await, Vec::<String>::new());
    }
    talking.close().await;
    listening.close().await;
    server.finish().await;
}

/// The page's microphone without echo cancellation, noise suppression or
/// gain control, and its peer connections kept where a test can read them.
const WITHOUT_PROCESSING: &str = "
    const devices = navigator.mediaDevices;
    const original = devices.getUserMedia.bind(devices);
    devices.getUserMedia = () =>
      original({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });";

/// Keeps each peer connection the page makes in `window.connections`.
const KEEP_PEER_CONNECTIONS: &str = "
    window.connections = [];
    const Original = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends Original {
      constructor(...args) { super(...args); window.connections.push(this); }
    };";

/// Records what the page plays from the other side, at 48 kHz.
const RECORD: &str = "
    const context = new AudioContext({ sampleRate: 48000 });
    const source = context.createMediaStreamSource(document.getElementById('remote-audio').srcObject);
    const node = context.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    node.onaudioprocess = (event) => chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
    source.connect(node);
    node.connect(context.destination);
    context.resume();
    window.recording = { context, source, node, chunks };";

/// Stops the recording; its 16-bit little-endian samples, in base64.
const RECORDED: &str = "
    const { context, source, node, chunks } = window.recording;
    source.disconnect(); node.disconnect(); context.close();
    const pcm = new Int16Array(chunks.reduce((n, chunk) => n + chunk.length, 0));
    let at = 0;
    for (const chunk of chunks) for (const value of chunk) pcm[at++] = Math.max(-32768, Math.min(32767, Math.round(value * 32767)));
    const bytes = new Uint8Array(pcm.buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    return btoa(text);";

/// The newest peer connection's inbound audio statistics.
const RECEIVED: &str = "
    const done = arguments[arguments.length - 1];
    window.connections[window.connections.length - 1].getStats().then((report) => {
      let found = null;
      report.forEach((entry) => { if (entry.type === 'inbound-rtp' && entry.kind === 'audio') found = entry; });
      done(found);
    });";
