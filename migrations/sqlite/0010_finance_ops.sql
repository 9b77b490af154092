-- Finance ops. A frozen wallet keeps why, by which operator and when it
-- was frozen (shown in the account view; cleared when it is unfrozen).
ALTER TABLE ledger_accounts ADD COLUMN frozen_reason TEXT;
ALTER TABLE ledger_accounts ADD COLUMN frozen_by TEXT;     -- an operator id
ALTER TABLE ledger_accounts ADD COLUMN frozen_at BIGINT;     -- set exactly while frozen
-- Wallets frozen before reasons were kept: frozen at an unknown time.
UPDATE ledger_accounts SET frozen_at = 0 WHERE frozen = 1;

-- What active holds keep in a wallet: part of its balance that cannot be
-- sent, withdrawn or taken back (available = balance - held).
ALTER TABLE ledger_accounts ADD COLUMN held BIGINT NOT NULL DEFAULT 0;

-- A transfer's reversals, found by the transfer they reverse (what is left
-- to reverse is its amount less theirs). Partial: no other transfer pays
-- for an entry.
CREATE INDEX transfers_reversals ON transfers (linked_id) WHERE kind = 'reversal';

-- Operators search transfers newest first by region and by kind; ids are
-- UUIDv7, so that each of these indexes only ever grows at the right end of
-- its region's or kind's range (a page or two per batch), unlike the
-- per-account indexes that migration 5 removed.
CREATE INDEX transfers_by_region ON transfers (region, id);
CREATE INDEX transfers_by_kind ON transfers (kind, id);

-- Four-eyes adjustments: proposed by one operator, decided by another. An
-- approved one names the transfer that posted it (kind 'adjustment', between
-- the wallet and its region's adjustments account). A pending one past
-- expires_at counts as expired; the ledger writer records that when it
-- sweeps.
CREATE TABLE adjustments (
    id           TEXT PRIMARY KEY,               -- UUIDv7
    account_id   TEXT NOT NULL,                  -- the wallet
    amount       BIGINT NOT NULL CHECK (amount <> 0),  -- signed minor units: + credits the wallet
    currency     TEXT NOT NULL,
    region       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    proposed_by  TEXT NOT NULL,                  -- operator ids
    proposed_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    decided_by   TEXT,
    decided_at   BIGINT,
    transfer_id  TEXT
);
CREATE INDEX adjustments_by_status ON adjustments (status, id);

-- Holds: an amount kept in a wallet while a claim is examined (Brazil's
-- MED), then released, returned (as a reversal of the transfer it names)
-- or expired. The writer finds the active ones past their time by status.
CREATE TABLE holds (
    id                  TEXT PRIMARY KEY,        -- UUIDv7
    account_id          TEXT NOT NULL,           -- the wallet
    amount              BIGINT NOT NULL CHECK (amount > 0),
    currency            TEXT NOT NULL,
    region              TEXT NOT NULL,
    reason              TEXT NOT NULL,
    transfer_id         TEXT,                    -- the transfer the claim is about
    status              TEXT NOT NULL CHECK (status IN ('active', 'released', 'returned', 'expired')),
    placed_by           TEXT NOT NULL,           -- operator ids
    placed_at           BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    decided_by          TEXT,
    decided_at          BIGINT,
    return_transfer_id  TEXT                     -- the reversal of a returned hold
);
CREATE INDEX holds_by_status ON holds (status, expires_at);
CREATE INDEX holds_by_account ON holds (account_id, id);

-- The audit log of operators' actions, hash-chained (courier_common::audit
-- documents the canonical form). audit_head names the newest entry; every
-- appender writes it in its transaction, so that one chain has one order.
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY,
    at           BIGINT NOT NULL,
    operator     TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    request_id   TEXT,
    before_json  TEXT,
    after_json   TEXT,
    hash         TEXT NOT NULL            -- SHA-256 over the previous hash and this entry's canonical bytes
);
CREATE INDEX audit_log_by_target ON audit_log (target, seq);
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only by construction: no code path updates or deletes an entry,
-- and the database refuses it too.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- Each transfer records the balances its two accounts had right after it,
-- so that an account's balance at any moment is that of its last transfer
-- before it, found along its chain without summing its history. The
-- transfers so far get theirs here, in the order of their ids (UUIDv7: the
-- order they were made in).
ALTER TABLE transfers ADD COLUMN debit_balance BIGINT;
ALTER TABLE transfers ADD COLUMN credit_balance BIGINT;
CREATE TEMP TABLE ledger_running AS
SELECT transfer, account,
    SUM(delta) OVER (PARTITION BY account ORDER BY transfer ROWS UNBOUNDED PRECEDING) AS balance
FROM (
    SELECT id AS transfer, debit_account AS account, -amount AS delta FROM transfers
    UNION ALL
    SELECT id, credit_account, amount FROM transfers
) AS postings;
CREATE INDEX ledger_running_by_transfer ON ledger_running (transfer, account);
UPDATE transfers SET
    debit_balance = (SELECT balance FROM ledger_running r WHERE r.transfer = transfers.id AND r.account = transfers.debit_account),
    credit_balance = (SELECT balance FROM ledger_running r WHERE r.transfer = transfers.id AND r.account = transfers.credit_account);
DROP TABLE ledger_running;

-- Checkpoints along each account's chain, about one in 512 of its
-- transfers (chosen by a hash of the transfer and the account, so that the
-- writer keeps no count): the balance at a moment is found from the first
-- checkpoint after it, walking back at most a few thousand transfers,
-- however long the history.
CREATE TABLE balance_checkpoints (
    account      TEXT NOT NULL,
    at           BIGINT NOT NULL,
    transfer_id  TEXT NOT NULL,
    balance      BIGINT NOT NULL,
    PRIMARY KEY (account, transfer_id)
);
CREATE INDEX balance_checkpoints_by_time ON balance_checkpoints (account, at);
