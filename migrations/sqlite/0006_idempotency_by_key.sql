-- Idempotency keys are looked up by (scope, key) and nothing else, so the
-- order of the primary key's columns is free. Key first puts the keys that
-- clients make sortable by time (UUIDv7, ULID; the README recommends them)
-- at the end of the index, where a batch's new keys share a page or two;
-- scope first scattered every new key onto a page of its sender's, one page
-- written per transfer. Without a rowid the row lives in the primary key's
-- own B-tree: one B-tree written per key instead of two.
CREATE TABLE idempotency_keys_by_key (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,                  -- SHA-256 of method, path and canonical body
    status       BIGINT NOT NULL,
    body         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (key, scope)
) WITHOUT ROWID;

INSERT INTO idempotency_keys_by_key (scope, key, fingerprint, status, body, created_at)
SELECT scope, key, fingerprint, status, body, created_at FROM idempotency_keys;

DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_by_key RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
