-- Transfers no longer carry foreign keys to the ledger accounts (nor to
-- their linked P2P transfer). The ledger writer is the only writer of
-- transfers: every account a batch posts to is loaded from ledger_accounts
-- before the batch is applied, and the batch's invariant check refuses a
-- transfer that names an account the writer did not load (README, "How the
-- ledger writes"). Reconciliation reports any transfer whose account does
-- not exist. On PostgreSQL each foreign key was a row-locking query per
-- transfer, about a fifth of the writer's database time; both dialects keep
-- the same schema.
CREATE TABLE transfers_unreferenced (
    id              TEXT PRIMARY KEY,            -- UUIDv7: sorts by creation
    kind            TEXT NOT NULL CHECK (kind IN ('p2p', 'fee', 'deposit', 'withdrawal', 'reversal', 'adjustment')),
    debit_account   TEXT NOT NULL,               -- a ledger_accounts id
    credit_account  TEXT NOT NULL,               -- a ledger_accounts id
    amount          BIGINT NOT NULL CHECK (amount > 0),
    fee             BIGINT NOT NULL DEFAULT 0,   -- on a p2p transfer: what its linked fee transfer carries
    currency        TEXT NOT NULL,
    region          TEXT NOT NULL,
    linked_id       TEXT,                        -- a fee transfer: its p2p transfer
    initiator       TEXT NOT NULL,               -- account id or operator id
    note            TEXT,
    external_ref    TEXT,
    created_at      BIGINT NOT NULL,
    debit_prev      TEXT,                        -- the debit account's transfer before this one
    credit_prev     TEXT,                        -- the credit account's transfer before this one
    CONSTRAINT transfer_between_two_accounts CHECK (debit_account <> credit_account)
);

INSERT INTO transfers_unreferenced (id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id,
    initiator, note, external_ref, created_at, debit_prev, credit_prev)
SELECT id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id,
    initiator, note, external_ref, created_at, debit_prev, credit_prev
FROM transfers;

DROP TABLE transfers;
ALTER TABLE transfers_unreferenced RENAME TO transfers;
CREATE INDEX transfers_by_time ON transfers (created_at);
