//! Signed checkpoints of the audit log: small statements `(seq, head, at)`
//! that the service signs with its Ed25519 audit key, like Certificate
//! Transparency's signed tree heads. A hash chain alone can be recomputed
//! end to end by whoever can write the table; a checkpoint kept outside the
//! database pins every entry up to its `seq`, because nobody without the
//! audit key can sign a different head for it.
//!
//! The signed bytes are the compact JSON array
//!
//! ```text
//! ["courier-audit-checkpoint/1", seq, head, at]
//! ```
//!
//! with `head` the hash of entry `seq` (lower-case hex) and `at` the signing
//! time in RFC 3339 UTC with milliseconds, as shown. A key's id is the first
//! 16 hex digits of the SHA-256 of its 32 public bytes.
//!
//! [`ChainWalk`] verifies a whole chain read newest first (as the admin API
//! lists it) in constant memory, against the checkpoints it was given.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{Entry, GENESIS, canonical, link};

const STATEMENT_TAG: &str = "courier-audit-checkpoint/1";

/// A signed checkpoint, as listed by `GET /admin/v1/audit/checkpoints` and
/// kept in a file by auditors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The entry it pins (every entry before it with it).
    pub seq: i64,
    /// That entry's hash.
    pub head: String,
    /// When it was signed (RFC 3339 UTC, milliseconds).
    pub at: String,
    /// The signing key's id (see `GET /admin/v1/audit/keys`).
    pub key_id: String,
    /// The Ed25519 signature of the statement, base64url without padding.
    pub signature: String,
}

/// A public audit key, as published by `GET /admin/v1/audit/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditKey {
    pub key_id: String,
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The 32 public bytes, base64url without padding.
    pub public_key: String,
    /// When the service first signed with it (RFC 3339).
    pub created_at: String,
}

/// The published keys: the current one and every one used before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditKeys {
    pub keys: Vec<AuditKey>,
}

/// The bytes a checkpoint's signature covers.
pub fn statement(seq: i64, head: &str, at: &str) -> Vec<u8> {
    serde_json::to_vec(&(STATEMENT_TAG, seq, head, at)).expect("a tuple of numbers and strings always serialises")
}

/// The id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public: &[u8; 32]) -> String {
    crate::text::hex(&Sha256::digest(public))[..16].to_owned()
}

/// Why a checkpoint does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint at entry {seq} is signed by key {key_id}, which is not among the trusted audit keys")]
    UnknownKey { seq: i64, key_id: String },
    #[error("the checkpoint at entry {seq} does not carry a valid signature of key {key_id}: it was altered or forged")]
    BadSignature { seq: i64, key_id: String },
    #[error("the audit key {0} is not a 32-byte Ed25519 public key in base64url")]
    BadKey(String),
}

impl Checkpoint {
    /// Checks the signature with the key it names among `keys`.
    pub fn verify(&self, keys: &[AuditKey]) -> Result<(), CheckpointError> {
        let key = keys
            .iter()
            .find(|key| key.key_id == self.key_id)
            .ok_or_else(|| CheckpointError::UnknownKey { seq: self.seq, key_id: self.key_id.clone() })?;
        let public = decode_key(key)?;
        let bad = || CheckpointError::BadSignature { seq: self.seq, key_id: self.key_id.clone() };
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(bad)?;
        public.verify(&statement(self.seq, &self.head, &self.at), &signature).map_err(|_| bad())
    }
}

fn decode_key(key: &AuditKey) -> Result<VerifyingKey, CheckpointError> {
    let bad = || CheckpointError::BadKey(key.key_id.clone());
    let bytes: [u8; 32] =
        URL_SAFE_NO_PAD.decode(&key.public_key).ok().and_then(|bytes| bytes.try_into().ok()).ok_or_else(bad)?;
    let public = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
    if key_id(&bytes) != key.key_id {
        return Err(bad());
    }
    Ok(public)
}

/// Something a chain walk found wrong, by entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    #[error("entry {0} does not link to the entry before it (changed, or out of order)")]
    Broken(i64),
    #[error("entries are missing before entry {0}")]
    Gap(i64),
    #[error("the oldest entry is {0}, not 1: the start of the log is missing")]
    MissingStart(i64),
    #[error("entry {seq}'s hash differs from the checkpoint signed at {at}: the log was rewritten up to there")]
    Rewritten { seq: i64, at: String },
    #[error("the checkpoint signed at {at} pins entry {seq}, which the log no longer holds: entries were cut")]
    Cut { seq: i64, at: String },
}

/// Verifies a chain fed newest first, one entry at a time, in constant
/// memory: each entry's hash must be the link of its predecessor's stored
/// hash and its own canonical bytes, seqs must run down by one to 1 (which
/// links to the genesis hash), and every checkpoint's entry must carry the
/// checkpoint's head.
#[derive(Debug, Default)]
pub struct ChainWalk {
    /// The newer entry whose predecessor comes next.
    pending: Option<Entry>,
    pins: BTreeMap<i64, Vec<(String, String)>>,
    pub entries: i64,
    pub head: Option<(i64, String)>,
    pub faults: Vec<ChainFault>,
}

impl ChainWalk {
    pub fn new(checkpoints: &[Checkpoint]) -> Self {
        let mut pins: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
        for checkpoint in checkpoints {
            pins.entry(checkpoint.seq).or_default().push((checkpoint.head.clone(), checkpoint.at.clone()));
        }
        ChainWalk { pins, ..ChainWalk::default() }
    }

    /// The next older entry.
    pub fn feed(&mut self, entry: Entry) {
        self.entries += 1;
        if self.head.is_none() {
            self.head = Some((entry.seq, entry.hash.clone()));
            // Checkpoints past the newest entry pin entries that are gone.
            for (seq, pins) in self.pins.range(entry.seq + 1..) {
                for (_, at) in pins {
                    self.faults.push(ChainFault::Cut { seq: *seq, at: at.clone() });
                }
            }
        }
        if let Some(newer) = self.pending.take() {
            if newer.seq != entry.seq + 1 {
                self.faults.push(ChainFault::Gap(newer.seq));
            } else if link(&entry.hash, &canonical(newer.seq, &newer.draft())) != newer.hash {
                self.faults.push(ChainFault::Broken(newer.seq));
            }
        }
        if let Some(pins) = self.pins.get(&entry.seq) {
            for (head, at) in pins {
                if *head != entry.hash {
                    self.faults.push(ChainFault::Rewritten { seq: entry.seq, at: at.clone() });
                }
            }
        }
        self.pending = Some(entry);
    }

    /// Ends the walk: the oldest entry must be the first.
    pub fn finish(mut self) -> Self {
        if let Some(oldest) = self.pending.take() {
            if oldest.seq != 1 {
                self.faults.push(ChainFault::MissingStart(oldest.seq));
            } else if link(GENESIS, &canonical(1, &oldest.draft())) != oldest.hash {
                self.faults.push(ChainFault::Broken(1));
            }
        } else {
            for (seq, pins) in &self.pins {
                for (_, at) in pins {
                    self.faults.push(ChainFault::Cut { seq: *seq, at: at.clone() });
                }
            }
        }
        self
    }
}

/// An entry as `GET /admin/v1/audit` lists it (`at` in RFC 3339 with
/// milliseconds), back in the form its hash covers.
pub fn listed_entry(item: &serde_json::Value) -> Result<Entry, String> {
    let text = |name: &str| item[name].as_str().map(str::to_owned);
    let at_ms = text("at")
        .and_then(|at| at.parse::<jiff::Timestamp>().ok())
        .map(|at| at.as_millisecond())
        .ok_or_else(|| format!("an entry listed without a valid time: {item}"))?;
    Ok(Entry {
        seq: item["seq"].as_i64().ok_or_else(|| format!("an entry listed without seq: {item}"))?,
        at_ms,
        operator: text("operator").unwrap_or_default(),
        action: text("action").unwrap_or_default(),
        target: text("target").unwrap_or_default(),
        request_id: text("request_id"),
        before: text("before"),
        after: text("after"),
        hash: text("hash").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Draft, chain_all};
    use ed25519_dalek::{Signer, SigningKey};

    fn entries(count: usize) -> Vec<Entry> {
        let drafts: Vec<Draft> = (0..count)
            .map(|i| Draft {
                at_ms: 1_000 + i as i64,
                operator: "op".into(),
                action: "freeze".into(),
                target: format!("t{i}"),
                request_id: None,
                before: None,
                after: Some("{}".into()),
            })
            .collect();
        chain_all(&drafts, 0, GENESIS).0
    }

    fn signed(key: &SigningKey, entry: &Entry) -> Checkpoint {
        let at = "2026-12-06T10:00:00.000Z".to_owned();
        let signature = key.sign(&statement(entry.seq, &entry.hash, &at));
        Checkpoint {
            seq: entry.seq,
            head: entry.hash.clone(),
            at,
            key_id: key_id(&key.verifying_key().to_bytes()),
            signature: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        }
    }

    fn published(key: &SigningKey) -> AuditKey {
        let public = key.verifying_key().to_bytes();
        AuditKey {
            key_id: key_id(&public),
            algorithm: "Ed25519".into(),
            public_key: URL_SAFE_NO_PAD.encode(public),
            created_at: String::new(),
        }
    }

    fn walk(entries: &[Entry], checkpoints: &[Checkpoint]) -> Vec<ChainFault> {
        let mut walk = ChainWalk::new(checkpoints);
        for entry in entries.iter().rev() {
            walk.feed(entry.clone());
        }
        walk.finish().faults
    }

    #[test]
    fn a_signed_checkpoint_verifies_only_untouched_and_with_its_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let chain = entries(3);
        let checkpoint = signed(&key, &chain[1]);
        assert_eq!(checkpoint.verify(&[published(&other), published(&key)]), Ok(()));
        assert!(matches!(checkpoint.verify(&[published(&other)]), Err(CheckpointError::UnknownKey { .. })));
        let mut tampered = checkpoint.clone();
        tampered.seq = 3;
        assert!(matches!(tampered.verify(&[published(&key)]), Err(CheckpointError::BadSignature { .. })));
        let mut renamed = published(&other);
        renamed.key_id = checkpoint.key_id.clone();
        assert!(matches!(checkpoint.verify(&[renamed]), Err(CheckpointError::BadKey(_))));
    }

    #[test]
    fn a_walk_finds_breaks_and_consistent_rewrites_before_a_checkpoint() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let chain = entries(5);
        let checkpoint = signed(&key, &chain[2]);
        assert_eq!(walk(&chain, std::slice::from_ref(&checkpoint)), vec![]);

        let mut changed = chain.clone();
        changed[1].target = "other".into();
        assert_eq!(walk(&changed, &[]), vec![ChainFault::Broken(2)]);

        // Rewritten and rehashed from entry 2 on: a consistent chain, which
        // only the checkpoint shows.
        let mut drafts: Vec<Draft> = chain.iter().map(Entry::draft).collect();
        drafts[1].target = "other".into();
        let rewritten = chain_all(&drafts, 0, GENESIS).0;
        assert_eq!(walk(&rewritten, &[]), vec![]);
        assert_eq!(
            walk(&rewritten, std::slice::from_ref(&checkpoint)),
            vec![ChainFault::Rewritten { seq: 3, at: checkpoint.at.clone() }]
        );

        assert_eq!(
            walk(&chain[..2], std::slice::from_ref(&checkpoint)),
            vec![ChainFault::Cut { seq: 3, at: checkpoint.at.clone() }]
        );
        assert_eq!(walk(&chain[1..], &[]), vec![ChainFault::MissingStart(2)]);
        let mut gap = chain.clone();
        gap.remove(2);
        assert_eq!(walk(&gap, &[]), vec![ChainFault::Gap(4)]);
    }
}
