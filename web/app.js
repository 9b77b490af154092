// Courier in the browser: sign-in and the wallet. Plain ES module, no
// framework, no build step. Tokens live in this module's memory only (never
// in localStorage): a reload signs the person out.

import { renewToken, startCalls, stopCalls } from "/call.js";

const $ = (id) => document.getElementById(id);

/** What a refusal code means to a person (API.md's error codes). */
const SENTENCES = {
  invalid_phone: "That is not a mobile number we can send a code to. Check the country code.",
  rate_limited: "Too many codes were asked for. Wait a little and try again.",
  invalid_code: "That code is not right. Check it and try again.",
  code_expired: "That code has expired. Ask for a new one.",
  too_many_attempts: "Too many wrong codes. Ask for a new one.",
  code_delivery_failed: "The code could not be sent just now. Try again in a moment.",
  invalid_amount: "Enter an amount like 150.00, with at most two decimal places.",
  currency_mismatch: "Money can only be sent in your region's currency.",
  recipient_not_found: "Nobody uses Courier with that number yet.",
  self_transfer: "You cannot send money to yourself.",
  region_not_supported: "Payments are not available in your region yet.",
  region_disabled: "Payments in your region are paused. Try again later.",
  cross_region: "You can only send money to someone in your own country.",
  wallet_frozen: "Your wallet is frozen. Contact support.",
  recipient_frozen: "The recipient's wallet cannot receive money right now.",
  insufficient_funds: "Your balance does not cover the amount and the fee.",
  limit_per_transfer: "That is more than one transfer may carry in your region.",
  limit_daily: "That would go over your daily limit.",
  limit_monthly: "That would go over your monthly limit.",
  limit_night: "That would go over the night-time limit (20:00 to 06:00).",
  balance_limit: "That would put more in the recipient's wallet than it may hold.",
  overloaded: "Courier is busy. Your transfer was not sent; try again in a moment.",
  ledger_unavailable: "Payments are briefly unavailable. Try again in a moment: it will not be sent twice.",
  idempotency_key_in_use: "Your transfer is still being processed. Wait a moment.",
  unauthenticated: "You were signed out. Sign in again.",
};

/** Where the API gives it, what is left of the limit a refusal names. */
const LIMIT_LEFT = { limit_per_transfer: "per_transfer", limit_daily: "daily", limit_monthly: "monthly", limit_night: "night" };

function sentence(error) {
  const said = SENTENCES[error.code] || error.message || "Something went wrong. Try again.";
  const limit = LIMIT_LEFT[error.code];
  const left = limit && lastQuote && lastQuote.limits_left[limit];
  if (!left) return said;
  const what = limit === "per_transfer" ? "One transfer may carry at most" : "You can still send";
  return `${said} ${what} ${left} ${lastQuote.currency}.`;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const session = { accountId: null, deviceId: null, access: null, refresh: null, timer: null };

async function call(method, path, body, headers = {}, retried = false) {
  const init = { method, headers: { ...headers } };
  if (session.access) init.headers.authorization = `Bearer ${session.access}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "Courier cannot be reached. Check your connection and try again.");
  }
  if (response.status === 401 && session.refresh && !retried) {
    if (await refresh()) return call(method, path, body, headers, true);
  }
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = value && value.error ? value.error : { code: "http_" + response.status, message: "" };
    throw new ApiError(response.status, error.code, error.message);
  }
  return value;
}

function keep(tokens) {
  session.access = tokens.access_token;
  session.refresh = tokens.refresh_token;
  clearTimeout(session.timer);
  // Refresh a minute before the access token expires.
  const seconds = Math.max(5, (tokens.expires_in || 900) - 60);
  session.timer = setTimeout(refresh, seconds * 1000);
  renewToken(tokens.access_token);
}

async function refresh() {
  const token = session.refresh;
  if (!token) return false;
  try {
    const response = await fetch("/v1/auth/refresh", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: token }),
    });
    if (!response.ok) throw new Error("refused");
    keep(await response.json());
    return true;
  } catch {
    signedOut("You were signed out. Sign in again.");
    return false;
  }
}

function say(id, text, isError = false) {
  const element = $(id);
  element.textContent = text;
  element.classList.toggle("error", isError);
}

function signedOut(message = "") {
  stopCalls();
  clearTimeout(session.timer);
  Object.assign(session, { accountId: null, deviceId: null, access: null, refresh: null, timer: null });
  $("wallet").hidden = true;
  $("calls").hidden = true;
  $("devices").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("session-form").hidden = true;
  say("sign-in-status", message, Boolean(message));
  $("phone").focus();
}

$("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = event.submitter || $("code-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await call("POST", "/v1/auth/codes", { phone: $("phone").value.trim() });
    $("session-form").hidden = false;
    say("sign-in-status", "We sent you a code.");
    $("code").focus();
  } catch (error) {
    say("sign-in-status", sentence(error), true);
  } finally {
    button.disabled = false;
  }
});

$("session-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = event.submitter || $("session-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const tokens = await call("POST", "/v1/auth/sessions", {
      phone: $("phone").value.trim(),
      code: $("code").value.trim(),
      device_name: "Browser",
    });
    session.accountId = tokens.account_id;
    session.deviceId = tokens.device_id;
    keep(tokens);
    $("code").value = "";
    say("sign-in-status", "");
    await signedIn();
  } catch (error) {
    say("sign-in-status", sentence(error), true);
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    if (session.deviceId) await call("DELETE", `/v1/me/devices/${session.deviceId}`);
  } catch {
    // Signed out here either way; the session's refresh token is spent or revoked.
  }
  signedOut();
});

async function signedIn() {
  $("sign-in").hidden = true;
  $("wallet").hidden = false;
  $("calls").hidden = false;
  $("devices").hidden = false;
  $("sign-out").hidden = false;
  startCalls({ token: () => session.access, call });
  await Promise.all([showWallet(), showHistory(true), showDevices()]);
}

let wallet = null;

async function showWallet() {
  try {
    wallet = await call("GET", "/v1/wallet");
    $("balance").textContent = `${wallet.balance} ${wallet.currency}` + (wallet.status === "frozen" ? " (frozen)" : "");
  } catch (error) {
    $("balance").textContent = "—";
    say("send-status", sentence(error), true);
  }
}

let historyCursor = null;

async function showHistory(fromStart) {
  if (fromStart) {
    historyCursor = null;
    $("history").replaceChildren();
  }
  const query = historyCursor ? `?limit=20&cursor=${encodeURIComponent(historyCursor)}` : "?limit=20";
  try {
    const page = await call("GET", `/v1/transfers${query}`);
    for (const transfer of page.items) $("history").append(historyItem(transfer));
    historyCursor = page.next_cursor;
    $("older").hidden = !historyCursor;
  } catch (error) {
    say("send-status", sentence(error), true);
  }
}

function historyItem(transfer) {
  const outgoing = transfer.from === session.accountId;
  const item = document.createElement("li");
  const what = document.createElement("span");
  const when = new Date(transfer.created_at).toLocaleString();
  what.textContent = `${transfer.kind === "p2p" ? (outgoing ? "Sent" : "Received") : transfer.kind} · ${when}`;
  const amount = document.createElement("span");
  amount.className = `amount ${outgoing ? "out" : "in"}`;
  const fee = outgoing && transfer.fee && transfer.fee !== "0.00" ? ` (fee ${transfer.fee})` : "";
  amount.textContent = `${outgoing ? "−" : "+"}${transfer.amount} ${transfer.currency}${fee}`;
  item.append(what, amount);
  return item;
}

$("older").addEventListener("click", () => showHistory(false));

// The fee (and what is left of the limits) for the amount being typed.
let lastQuote = null;
let quoteTimer = null;

for (const field of ["amount", "recipient"]) {
  $(field).addEventListener("input", () => {
    clearTimeout(quoteTimer);
    quoteTimer = setTimeout(showQuote, 250);
  });
}

/** The fee for the amount, and whether the recipient can be paid, asked
 * while they are typed (the transfer's own answer is what counts). */
async function showQuote() {
  const amount = $("amount").value.trim();
  const recipient = $("recipient").value.trim();
  const query = new URLSearchParams();
  if (/^(0|[1-9][0-9]*)(\.[0-9]+)?$/.test(amount)) query.set("amount", amount);
  if (/^\+[0-9 ().-]{8,31}$/.test(recipient) || isAccountId(recipient)) query.set("to", recipient);
  if (!query.has("amount") && !query.has("to")) {
    $("quote").textContent = "";
    return;
  }
  try {
    const quote = await call("GET", `/v1/transfers/quote?${query}`);
    if ($("amount").value.trim() !== amount || $("recipient").value.trim() !== recipient) return;
    lastQuote = quote;
    $("quote").textContent = quote.fee ? `Fee ${quote.fee} ${quote.currency} · you pay ${quote.total} ${quote.currency}` : "";
  } catch (error) {
    if ($("amount").value.trim() === amount && $("recipient").value.trim() === recipient) {
      $("quote").textContent = sentence(error);
    }
  }
}

function isAccountId(text) {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(text);
}

// One Idempotency-Key per transfer the person means to make: a double click
// or a retry after a network failure sends the same key, so the money moves
// once; changing the recipient or the amount makes it another transfer.
let pending = null;

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = event.submitter || $("send-form").querySelector("button[type=submit]");
  if (button.disabled) return;
  const recipient = $("recipient").value.trim();
  // The person on a call may be known by their account id only.
  const body = {
    to: isAccountId(recipient) ? { account_id: recipient } : { phone: recipient },
    amount: $("amount").value.trim(),
    currency: wallet ? wallet.currency : "RUB",
  };
  const intent = JSON.stringify(body);
  if (!pending || pending.intent !== intent) pending = { intent, key: crypto.randomUUID() };
  button.disabled = true;
  say("send-status", "Sending…");
  try {
    const sent = await call("POST", "/v1/transfers", body, { "idempotency-key": pending.key });
    pending = null;
    const fee = sent.fee && sent.fee !== "0.00" ? ` (fee ${sent.fee} ${sent.currency})` : "";
    say("send-status", `Sent ${sent.amount} ${sent.currency}${fee}.`);
    $("amount").value = "";
    await Promise.all([showWallet(), showHistory(true)]);
  } catch (error) {
    // A refusal is final: a new attempt is a new transfer. A network failure
    // or an overloaded ledger keeps the key for the retry.
    if (error.status >= 400 && error.status < 500 && error.code !== "idempotency_key_in_use") pending = null;
    say("send-status", sentence(error), true);
  } finally {
    button.disabled = false;
  }
});

async function showDevices() {
  try {
    const page = await call("GET", "/v1/me/devices");
    const items = page.items.map((device) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      const current = device.current ? " (this browser)" : "";
      name.textContent = `${device.name}${current}`;
      item.append(name);
      if (!current) {
        const revoke = document.createElement("button");
        revoke.type = "button";
        revoke.textContent = "Revoke";
        revoke.setAttribute("aria-label", `Revoke ${device.name}`);
        revoke.addEventListener("click", async () => {
          try {
            await call("DELETE", `/v1/me/devices/${device.device_id}`);
            await showDevices();
          } catch (error) {
            say("send-status", sentence(error), true);
          }
        });
        item.append(revoke);
      }
      return item;
    });
    $("device-list").replaceChildren(...items);
  } catch {
    $("device-list").replaceChildren();
  }
}

signedOut();
