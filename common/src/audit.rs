//! The audit log of operators' actions: append-only and hash-chained.
//!
//! Entry `n` stores `hash_n = SHA-256(hash_{n-1} ‖ canonical_n)` as lower-case
//! hex, with `hash_0` of entry 1's predecessor being 64 zeros ([`GENESIS`]).
//! The canonical bytes of an entry are the compact JSON array
//!
//! ```text
//! [seq, at_ms, operator, action, target, request_id, before, after]
//! ```
//!
//! written by `serde_json` (numbers as integers, strings with its escaping,
//! `null` for an absent request id, before or after); `before` and `after`
//! are the JSON texts as stored, carried as strings, never re-encoded. So
//! changing, removing or reordering any stored field of any entry changes
//! its hash, and every hash after it.
//!
//! `audit_head` holds the newest entry's `(seq, hash)`: appenders lock it
//! (PostgreSQL: `FOR UPDATE`; SQLite: the write transaction), so that the
//! ledger's writer and the accounts service append to one chain in one
//! order, and verification also notices entries cut from the end.
//! Appends happen in the same transaction as the action they record.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Backend, Database};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An action to record; its place in the chain is given when it is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub at_ms: i64,
    /// The operator's id (`system` for what the service does by itself).
    pub operator: String,
    pub action: String,
    /// What it acted on: an account, transfer, hold, adjustment, region or operator id.
    pub target: String,
    pub request_id: Option<String>,
    /// JSON texts of the target before and after (`None`: none).
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub seq: i64,
    pub at_ms: i64,
    pub operator: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub hash: String,
}

impl Draft {
    /// The entry this draft becomes at `seq` after the entry hashed `prev`.
    pub fn chain(self, seq: i64, prev: &str) -> Entry {
        let canonical = canonical(seq, &self);
        let hash = link(prev, &canonical);
        let Draft { at_ms, operator, action, target, request_id, before, after } = self;
        Entry { seq, at_ms, operator, action, target, request_id, before, after, hash }
    }
}

/// `drafts` chained after the entry `(seq, hash)`: the entries to store,
/// and the new head.
pub fn chain_all(drafts: &[Draft], mut seq: i64, hash: &str) -> (Vec<Entry>, (i64, String)) {
    let mut prev = hash.to_owned();
    let entries: Vec<Entry> = drafts
        .iter()
        .map(|draft| {
            seq += 1;
            let entry = draft.clone().chain(seq, &prev);
            prev.clone_from(&entry.hash);
            entry
        })
        .collect();
    (entries, (seq, prev))
}

impl Entry {
    /// The entry as it was drafted (what its canonical bytes cover).
    pub fn draft(&self) -> Draft {
        Draft {
            at_ms: self.at_ms,
            operator: self.operator.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            request_id: self.request_id.clone(),
            before: self.before.clone(),
            after: self.after.clone(),
        }
    }
}

/// The canonical bytes of an entry at `seq` (see the module's documentation).
pub fn canonical(seq: i64, draft: &Draft) -> Vec<u8> {
    serde_json::to_vec(&(
        seq,
        draft.at_ms,
        &draft.operator,
        &draft.action,
        &draft.target,
        &draft.request_id,
        &draft.before,
        &draft.after,
    ))
    .expect("a tuple of numbers and strings always serialises")
}

/// `SHA-256(prev ‖ canonical)` in lower-case hex.
pub fn link(prev: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(canonical);
    crate::text::hex(&hasher.finalize())
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// Every entry links to the one before it and the chain ends at the head.
    pub ok: bool,
    /// Entries read.
    pub entries: i64,
    /// The first entry that does not hold: changed, missing, out of order,
    /// or (cut from the end) the head's.
    pub first_bad: Option<i64>,
    /// The hash of the newest entry (the genesis hash when there is none).
    pub head: String,
}

/// Checks entries given in stored order (by `seq`) against `head`, the
/// newest entry's `(seq, hash)` as `audit_head` holds it.
pub fn verify(entries: impl IntoIterator<Item = Entry>, head: (i64, &str)) -> Verdict {
    let mut verifier = Verifier::default();
    for entry in entries {
        verifier.feed(&entry);
    }
    verifier.finish(head)
}

/// [`verify`] one entry at a time, in constant memory.
#[derive(Debug)]
pub struct Verifier {
    prev: String,
    count: i64,
    first_bad: Option<i64>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier { prev: GENESIS.to_owned(), count: 0, first_bad: None }
    }
}

impl Verifier {
    /// The next entry in stored order.
    pub fn feed(&mut self, entry: &Entry) {
        self.count += 1;
        if self.first_bad.is_some() {
            return;
        }
        let expected_seq = self.count;
        if entry.seq != expected_seq {
            // A gap (a deleted entry) or a seq written twice.
            self.first_bad = Some(expected_seq.min(entry.seq));
            return;
        }
        let hash = link(&self.prev, &canonical(entry.seq, &entry.draft()));
        if hash != entry.hash {
            self.first_bad = Some(entry.seq);
            return;
        }
        self.prev = hash;
    }

    /// The verdict against the stored head.
    pub fn finish(self, head: (i64, &str)) -> Verdict {
        let Verifier { prev, count, mut first_bad } = self;
        if first_bad.is_none() {
            first_bad = if count != head.0 {
                // Entries cut from the end (the first one missing), or entries
                // past the head (the first of them).
                Some(count.min(head.0) + 1)
            } else if prev != head.1 {
                // The newest entry is not the one the head names.
                Some(count.max(1))
            } else {
                None
            };
        }
        Verdict { ok: first_bad.is_none(), entries: count, first_bad, head: prev }
    }
}

pub const ENTRY_COLUMNS: &str = "seq, at, operator, action, target, request_id, before_json, after_json, hash";

pub type EntryRow = (i64, i64, String, String, String, Option<String>, Option<String>, Option<String>, String);

pub fn entry_from_row(row: EntryRow) -> Entry {
    let (seq, at_ms, operator, action, target, request_id, before, after, hash) = row;
    Entry { seq, at_ms, operator, action, target, request_id, before, after, hash }
}

/// The head as stored.
pub const HEAD_SQL: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
pub const HEAD_FOR_UPDATE_SQL: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
pub const INSERT_SQL: &str = "INSERT INTO audit_log (seq, at, operator, action, target, request_id, before_json, \
     after_json, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub const SET_HEAD_SQL: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

/// An INSERT's query with `entry`'s nine columns bound next, in the order
/// of [`INSERT_SQL`] (one row of a multi-row insert, as bulk loads write).
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub fn bind_entry(query: AnyQuery<'_>, entry: Entry) -> AnyQuery<'_> {
    query
        .bind(entry.seq)
        .bind(entry.at_ms)
        .bind(entry.operator)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.request_id)
        .bind(entry.before)
        .bind(entry.after)
        .bind(entry.hash)
}

/// Appends `drafts` in `transaction` (of the pool), after locking the head;
/// the caller commits with its own action.
pub async fn append(
    backend: Backend,
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    drafts: Vec<Draft>,
) -> Result<(), sqlx::Error> {
    let head_sql = match backend {
        Backend::Postgres => HEAD_FOR_UPDATE_SQL,
        // The transaction holds SQLite's write lock from its first write:
        // take it now, before reading the head.
        Backend::Sqlite => {
            sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut **transaction).await?;
            HEAD_SQL
        }
    };
    let (seq, hash): (i64, String) = sqlx::query_as(head_sql).fetch_one(&mut **transaction).await?;
    let (entries, (seq, hash)) = chain_all(&drafts, seq, &hash);
    for entry in entries {
        bind_entry(sqlx::query(INSERT_SQL), entry).execute(&mut **transaction).await?;
    }
    sqlx::query(SET_HEAD_SQL).bind(seq).bind(&hash).execute(&mut **transaction).await?;
    Ok(())
}

/// What entries to list; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub operator: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
}

/// Entries newest first, before `before_seq`, up to `limit`.
pub async fn list(
    db: &Database,
    filter: &Filter,
    before_seq: Option<i64>,
    limit: u32,
) -> Result<Vec<Entry>, sqlx::Error> {
    let mut conditions = vec!["seq < $1".to_owned()];
    let mut texts = Vec::new();
    for (column, value) in [("operator", &filter.operator), ("action", &filter.action), ("target", &filter.target)] {
        if let Some(value) = value {
            texts.push(value.clone());
            conditions.push(format!("{column} = ${}", texts.len() + 1));
        }
    }
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE {} ORDER BY seq DESC LIMIT ${}",
        conditions.join(" AND "),
        texts.len() + 2
    );
    let mut query = sqlx::query_as::<_, EntryRow>(&sql).bind(before_seq.unwrap_or(i64::MAX));
    for text in texts {
        query = query.bind(text);
    }
    Ok(query.bind(i64::from(limit)).fetch_all(db.pool()).await?.into_iter().map(entry_from_row).collect())
}

/// Recomputes the whole chain from the database, in pages, in one snapshot
/// (entries appended meanwhile are after its head), in constant memory.
pub async fn verify_stored(db: &Database) -> Result<Verdict, sqlx::Error> {
    const PAGE: i64 = 10_000;
    let mut snapshot = db.snapshot().await?;
    let (head_seq, head_hash): (i64, String) = sqlx::query_as(HEAD_SQL).fetch_one(&mut *snapshot).await?;
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
    let mut verifier = Verifier::default();
    let mut after = i64::MIN;
    loop {
        let rows: Vec<EntryRow> = sqlx::query_as(&sql).bind(after).bind(PAGE).fetch_all(&mut *snapshot).await?;
        let done = (rows.len() as i64) < PAGE;
        if let Some(last) = rows.last() {
            after = last.0;
        }
        for row in rows {
            verifier.feed(&entry_from_row(row));
        }
        if done {
            break;
        }
    }
    snapshot.commit().await?;
    Ok(verifier.finish((head_seq, &head_hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str) -> Draft {
        Draft {
            at_ms: 1_000,
            operator: "op".into(),
            action: action.into(),
            target: "t".into(),
            request_id: None,
            before: None,
            after: Some(r#"{"status":"frozen"}"#.into()),
        }
    }

    fn chain(actions: &[&str]) -> Vec<Entry> {
        let mut prev = GENESIS.to_owned();
        actions
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let entry = draft(action).chain(i as i64 + 1, &prev);
                prev = entry.hash.clone();
                entry
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_names_its_first_bad_entry() {
        let entries = chain(&["a", "b", "c", "d"]);
        let head = (4, entries[3].hash.as_str());
        assert_eq!(
            verify(entries.clone(), head),
            Verdict { ok: true, entries: 4, first_bad: None, head: entries[3].hash.clone() }
        );

        let mut changed = entries.clone();
        changed[1].after = Some(r#"{"status":"active"}"#.into());
        assert_eq!(verify(changed, head).first_bad, Some(2));

        let mut removed = entries.clone();
        removed.remove(2);
        assert_eq!(verify(removed, head).first_bad, Some(3));

        let mut reordered = entries.clone();
        reordered.swap(1, 2);
        let (a, b) = (reordered[1].seq, reordered[2].seq);
        reordered[1].seq = b;
        reordered[2].seq = a;
        assert_eq!(verify(reordered, head).first_bad, Some(2));

        let cut = entries[..3].to_vec();
        assert_eq!(verify(cut, head).first_bad, Some(4), "an entry cut from the end shows against the head");
        assert!(verify(Vec::new(), (0, GENESIS)).ok);
    }

    #[test]
    fn the_canonical_form_is_the_documented_array() {
        let bytes = canonical(7, &draft("freeze"));
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"[7,1000,"op","freeze","t",null,null,"{\"status\":\"frozen\"}"]"#
        );
    }
}
