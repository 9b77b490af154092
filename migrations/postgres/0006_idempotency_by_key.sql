-- Idempotency keys are looked up by (scope, key) and nothing else, so the
-- order of the primary key's columns is free. Key first puts the keys that
-- clients make sortable by time (UUIDv7, ULID; the README recommends them)
-- at the end of the index, where a batch's new keys share a page or two;
-- scope first scattered every new key onto a page of its sender's, one page
-- written (and, after each checkpoint, logged whole) per transfer.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key, scope);
