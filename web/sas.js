// The short authentication string, computed exactly as the softphone does
// (protocol/src/sas.rs documents the bytes). The emoji table is the
// protocol's own file, served by Courier at /sas-emoji.txt: never a second
// copy typed by hand.

const DOMAIN = "courier-sas-v1";
export const SAS_EMOJIS = 4;
export const NONCE_BYTES = 32;

const encoder = new TextEncoder();

let table = null;

/** The 256 emojis, indexed by byte value: `[{symbol, name}]`. */
export async function emojiTable() {
  if (!table) {
    const response = await fetch("/sas-emoji.txt");
    if (!response.ok) throw new Error("the emoji table cannot be loaded");
    const text = await response.text();
    table = text
      .split("\n")
      .filter((line) => !line.startsWith("#") && line.trim() !== "")
      .map((line) => {
        const [, symbol, name] = line.split("\t");
        return { symbol, name };
      });
    if (table.length !== 256) throw new Error("the emoji table does not have 256 entries");
  }
  return table;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^[0-9a-fA-F]*$/.test(text) || text.length % 2) return null;
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/** A fresh random nonce. */
export function nonce() {
  return crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** The caller's commitment to its nonce: hex SHA-256. */
export async function commitment(nonceBytes) {
  return hex(await sha256(nonceBytes));
}

/** Whether a revealed nonce is the one committed to. */
export async function revealMatches(commitmentHex, nonceBytes) {
  return (await commitment(nonceBytes)) === commitmentHex.toLowerCase();
}

/** `sha-256 AB:CD:…` from any spelling of an SDP fingerprint attribute value. */
export function normalizeFingerprint(value) {
  const match = /^\s*(\S+)\s+(\S+)\s*$/.exec(value);
  if (!match) return null;
  const [, algorithm, bytes] = match;
  // A hash function's name (RFC 4572 `hash-func`): letters, digits and hyphens.
  if (!/^[A-Za-z0-9-]+$/.test(algorithm)) return null;
  if (!bytes.split(":").every((byte) => /^[0-9a-fA-F]{2}$/.test(byte))) return null;
  return `${algorithm.toLowerCase()} ${bytes.toUpperCase()}`;
}

/** The one DTLS fingerprint an SDP announces, normalised (several different ones: null). */
export function fingerprintInSdp(sdp) {
  let found = null;
  for (const line of sdp.split("\n")) {
    const value = line.replace(/\r$/, "");
    if (!value.startsWith("a=fingerprint:")) continue;
    const fingerprint = normalizeFingerprint(value.slice("a=fingerprint:".length));
    if (!fingerprint || (found && found !== fingerprint)) return null;
    found = fingerprint;
  }
  return found;
}

/** The SAS's indices into the table: the first four bytes of the digest. */
export async function sasIndices({ callId, callerFingerprint, calleeFingerprint, callerNonce, calleeNonce }) {
  const zero = new Uint8Array([0]);
  const parts = [
    encoder.encode(DOMAIN), zero,
    encoder.encode(callId), zero,
    encoder.encode(callerFingerprint), zero,
    encoder.encode(calleeFingerprint), zero,
    callerNonce, calleeNonce,
  ];
  const length = parts.reduce((sum, part) => sum + part.length, 0);
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return Array.from((await sha256(bytes)).slice(0, SAS_EMOJIS));
}

/** The SAS as shown: `[{symbol, name}]`, four of them. */
export async function sas(input) {
  const emojis = await emojiTable();
  return (await sasIndices(input)).map((index) => emojis[index]);
}
