-- Signed checkpoints of the audit log (courier_common::checkpoint): every
-- so many entries, and at least daily, a node signs (seq, head hash, time)
-- with its Ed25519 audit key. The public halves of every key that ever
-- signed stay here, published, after the key is rotated out; the private
-- keys stay in the data directories of the nodes that sign.
CREATE TABLE audit_keys (
    key_id      TEXT PRIMARY KEY,        -- the first 16 hex digits of SHA-256(public key)
    public_key  TEXT NOT NULL,           -- 32 bytes, base64url
    created_at  BIGINT NOT NULL
);
CREATE TABLE audit_checkpoints (
    id          TEXT PRIMARY KEY,        -- UUIDv7: sorts by signing time
    seq         BIGINT NOT NULL,
    head        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    signature   TEXT NOT NULL            -- Ed25519, base64url
);

-- Call records are deleted once older than the retention period, oldest
-- first, found by when they started.
CREATE INDEX calls_by_start ON calls (started_at);
