//! The short authentication string: emojis both people compare aloud to
//! know that nobody — the signaling server included — sits between their
//! devices. It hashes what a man in the middle cannot make equal on both
//! sides: the call id, the two DTLS certificate fingerprints each side saw,
//! and one nonce from each side.
//!
//! Commit-then-reveal, as in Telegram's calls: the caller's `invite` carries
//! `sas_commit` = SHA-256 of its nonce; the callee's `answer` carries its own
//! nonce (`sas_nonce`); only then does the caller send its nonce
//! (`sas_reveal`). Whoever sits in the middle must fix its own values before
//! learning the other side's, so it gets one guess at a matching SAS (1 in
//! 2^32 with four emojis), not a search. A reveal that does not match its
//! commitment is a warning.
//!
//! The SAS, byte for byte (the browser client computes the same):
//!
//! ```text
//! digest = SHA-256( "courier-sas-v1" 0x00 call_id 0x00
//!                   caller_fingerprint 0x00 callee_fingerprint 0x00
//!                   caller_nonce (32 bytes) callee_nonce (32 bytes) )
//! emoji i = TABLE[digest[i]]   for i in 0..4
//! ```
//!
//! Fingerprints are written as in SDP, normalised: the hash function in
//! lower case, one space, the hex bytes in upper case joined by colons
//! (`sha-256 AB:CD:…`). `TABLE` is `protocol/sas-emoji.txt`.

use std::fmt;
use std::sync::LazyLock;

use courier_common::text::hex;
use sha2::{Digest, Sha256};

/// Emojis shown: 32 bits.
pub const SAS_EMOJIS: usize = 4;
pub const NONCE_BYTES: usize = 32;
const DOMAIN: &[u8] = b"courier-sas-v1";
const TABLE_TEXT: &str = include_str!("../sas-emoji.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emoji {
    pub symbol: &'static str,
    /// Its Unicode name, for terminals that cannot show emoji.
    pub name: &'static str,
}

/// The 256 emojis, indexed by byte value.
pub static TABLE: LazyLock<Vec<Emoji>> = LazyLock::new(|| {
    TABLE_TEXT
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let (_, symbol, name) = (fields.next(), fields.next(), fields.next());
            Emoji {
                symbol: symbol.expect("sas-emoji.txt: code point, emoji, name"),
                name: name.expect("sas-emoji.txt: code point, emoji, name"),
            }
        })
        .collect()
});

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::fill(&mut nonce);
    nonce
}

/// The caller's commitment to its nonce: hex SHA-256.
pub fn commitment(nonce: &[u8; NONCE_BYTES]) -> String {
    hex(&Sha256::digest(nonce))
}

/// Whether a revealed nonce is the one committed to.
pub fn reveal_matches(commitment_hex: &str, nonce: &[u8; NONCE_BYTES]) -> bool {
    commitment(nonce).eq_ignore_ascii_case(commitment_hex)
}

/// A nonce sent as 64 hex digits.
pub fn parse_nonce(text: &str) -> Option<[u8; NONCE_BYTES]> {
    if text.len() != 2 * NONCE_BYTES {
        return None;
    }
    let mut nonce = [0u8; NONCE_BYTES];
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(nonce)
}

/// What the SAS is computed over.
#[derive(Debug, Clone)]
pub struct SasInput<'a> {
    pub call_id: &'a str,
    /// The caller's DTLS fingerprint (normalised, see [`normalize_fingerprint`]).
    pub caller_fingerprint: &'a str,
    pub callee_fingerprint: &'a str,
    pub caller_nonce: [u8; NONCE_BYTES],
    pub callee_nonce: [u8; NONCE_BYTES],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sas {
    pub indices: [u8; SAS_EMOJIS],
}

impl Sas {
    pub fn compute(input: &SasInput<'_>) -> Sas {
        let mut hash = Sha256::new();
        for part in [DOMAIN, input.call_id.as_bytes(), input.caller_fingerprint.as_bytes()] {
            hash.update(part);
            hash.update([0]);
        }
        hash.update(input.callee_fingerprint.as_bytes());
        hash.update([0]);
        hash.update(input.caller_nonce);
        hash.update(input.callee_nonce);
        let digest = hash.finalize();
        let mut indices = [0u8; SAS_EMOJIS];
        indices.copy_from_slice(&digest[..SAS_EMOJIS]);
        Sas { indices }
    }

    pub fn emojis(&self) -> Vec<Emoji> {
        self.indices.iter().map(|&index| TABLE[usize::from(index)]).collect()
    }

    pub fn symbols(&self) -> String {
        self.emojis().iter().map(|emoji| emoji.symbol).collect::<Vec<_>>().join(" ")
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.emojis().iter().map(|emoji| emoji.name).collect()
    }
}

impl fmt::Display for Sas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.symbols(), self.names().join(", "))
    }
}

/// `sha-256 AB:CD:…` from any spelling of an SDP fingerprint attribute value.
pub fn normalize_fingerprint(value: &str) -> Option<String> {
    let (algorithm, bytes) = value.trim().split_once(char::is_whitespace)?;
    let bytes = bytes.trim();
    let valid = !bytes.is_empty()
        && bytes.split(':').all(|byte| byte.len() == 2 && byte.bytes().all(|b| b.is_ascii_hexdigit()));
    // A hash function's name (RFC 4572 `hash-func`): letters, digits and hyphens.
    let named = !algorithm.is_empty() && algorithm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !named || !valid {
        return None;
    }
    Some(format!("{} {}", algorithm.to_ascii_lowercase(), bytes.to_ascii_uppercase()))
}

/// The DTLS fingerprint an SDP announces (`a=fingerprint:`), normalised.
/// Several different fingerprints in one SDP are refused: the SAS must cover
/// the one certificate the call uses.
pub fn fingerprint_in_sdp(sdp: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in sdp.lines() {
        if let Some(value) = line.trim_end_matches('\r').strip_prefix("a=fingerprint:") {
            let fingerprint = normalize_fingerprint(value)?;
            match &found {
                Some(earlier) if *earlier != fingerprint => return None,
                _ => found = Some(fingerprint),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER_FP: &str =
        "sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9";
    const CALLEE_FP: &str =
        "sha-256 F9:E8:D7:C6:B5:A4:93:82:71:60:5F:4E:3D:2C:1B:0A:F9:E8:D7:C6:B5:A4:93:82:71:60:5F:4E:3D:2C:1B:0A";

    fn input<'a>(call_id: &'a str, caller: &'a str, callee: &'a str) -> SasInput<'a> {
        SasInput {
            call_id,
            caller_fingerprint: caller,
            callee_fingerprint: callee,
            caller_nonce: [0x11; NONCE_BYTES],
            callee_nonce: [0x22; NONCE_BYTES],
        }
    }

    #[test]
    fn the_table_has_256_distinct_named_emojis() {
        assert_eq!(TABLE.len(), 256);
        let symbols: std::collections::HashSet<_> = TABLE.iter().map(|emoji| emoji.symbol).collect();
        let names: std::collections::HashSet<_> = TABLE.iter().map(|emoji| emoji.name).collect();
        assert_eq!((symbols.len(), names.len()), (256, 256));
        assert!(TABLE.iter().all(|emoji| emoji.symbol.chars().count() == 1 && !emoji.name.is_empty()));
        assert_eq!(TABLE[0], Emoji { symbol: "🐆", name: "leopard" });
    }

    #[test]
    fn the_sas_is_the_documented_hash() {
        // Computed independently with Python's hashlib over the documented layout:
        // sha256(b"courier-sas-v1\0call-1\0" + CALLER_FP + b"\0" + CALLEE_FP + b"\0" + b"\x11"*32 + b"\x22"*32)[:4]
        let sas = Sas::compute(&input("call-1", CALLER_FP, CALLEE_FP));
        assert_eq!(sas.indices, KNOWN_ANSWER);
        assert_eq!(sas.emojis().len(), SAS_EMOJIS);
    }

    const KNOWN_ANSWER: [u8; 4] = [229, 192, 129, 111];

    #[test]
    fn every_input_changes_the_sas() {
        let base = Sas::compute(&input("call-1", CALLER_FP, CALLEE_FP));
        assert_ne!(base, Sas::compute(&input("call-2", CALLER_FP, CALLEE_FP)));
        assert_ne!(base, Sas::compute(&input("call-1", CALLEE_FP, CALLER_FP)), "the roles count");
        let mitm = CALLEE_FP.replace("F9:E8", "F9:E9");
        assert_ne!(base, Sas::compute(&input("call-1", CALLER_FP, &mitm)), "a substituted certificate");
        let mut other_nonce = input("call-1", CALLER_FP, CALLEE_FP);
        other_nonce.callee_nonce[31] ^= 1;
        assert_ne!(base, Sas::compute(&other_nonce));
    }

    #[test]
    fn commitments_bind_the_nonce() {
        let nonce = nonce();
        let commit = commitment(&nonce);
        assert_eq!(commit.len(), 64);
        assert!(reveal_matches(&commit, &nonce));
        assert!(reveal_matches(&commit.to_ascii_uppercase(), &nonce));
        let mut other = nonce;
        other[0] ^= 0x80;
        assert!(!reveal_matches(&commit, &other));
        assert_eq!(parse_nonce(&hex(&nonce)), Some(nonce));
        assert_eq!(parse_nonce("zz"), None);
        assert_eq!(parse_nonce(&"g".repeat(64)), None);
    }

    #[test]
    fn fingerprints_are_read_from_sdp_and_normalised() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=fingerprint:SHA-256 0a:1b:2c\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 0A:1B:2C\r\n";
        assert_eq!(fingerprint_in_sdp(sdp).as_deref(), Some("sha-256 0A:1B:2C"));
        assert_eq!(fingerprint_in_sdp("v=0\r\n"), None);
        let two = "a=fingerprint:sha-256 0A:1B\r\na=fingerprint:sha-256 0A:1C\r\n";
        assert_eq!(fingerprint_in_sdp(two), None, "two certificates");
        assert_eq!(normalize_fingerprint("sha-256 0A:1B:XY"), None);
        assert_eq!(normalize_fingerprint("sha-256"), None);
        assert_eq!(normalize_fingerprint("\u{a1}\u{b}0a"), None, "a hash function is named in ASCII");
    }
}
