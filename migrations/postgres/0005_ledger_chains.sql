-- Every account's history becomes a chain through its transfers, and its
-- P2P usage moves onto its row. Before, each transfer put an entry into two
-- per-account indexes (transfers_by_debit, transfers_by_credit), each on a
-- page of its own, which every commit wrote out. Now a transfer names the
-- previous transfer of each of its two accounts, and the account row, which
-- the transfer rewrites anyway for its balance, names its newest transfer
-- and carries its usage.

ALTER TABLE transfers
    ADD COLUMN debit_prev TEXT,   -- the debit account's transfer before this one
    ADD COLUMN credit_prev TEXT;  -- the credit account's transfer before this one

-- What the account has sent P2P in its current local day, month and night
-- windows, named by their starts. A month start of NULL: not counted yet
-- (the wallets below); the ledger writer counts them when it starts.
ALTER TABLE ledger_accounts
    ADD COLUMN last_transfer TEXT,
    ADD COLUMN usage_day_start BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_day BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_month_start BIGINT DEFAULT 0,
    ADD COLUMN usage_month BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_night_start BIGINT,  -- NULL: not in a night window
    ADD COLUMN usage_night BIGINT NOT NULL DEFAULT 0;
UPDATE ledger_accounts SET usage_month_start = NULL WHERE kind = 'wallet';

-- The chains of the transfers so far, in the order of their ids (UUIDv7:
-- the order they were made in).
CREATE TEMP TABLE ledger_chain AS
SELECT transfer, account, LAG(transfer) OVER (PARTITION BY account ORDER BY transfer) AS prev
FROM (
    SELECT id AS transfer, debit_account AS account FROM transfers
    UNION ALL
    SELECT id, credit_account FROM transfers
) AS postings;
CREATE INDEX ledger_chain_by_transfer ON ledger_chain (transfer, account);
CREATE INDEX ledger_chain_by_account ON ledger_chain (account, transfer);

UPDATE transfers SET
    debit_prev = (SELECT prev FROM ledger_chain c WHERE c.transfer = transfers.id AND c.account = transfers.debit_account),
    credit_prev = (SELECT prev FROM ledger_chain c WHERE c.transfer = transfers.id AND c.account = transfers.credit_account);
UPDATE ledger_accounts SET
    last_transfer = (SELECT MAX(transfer) FROM ledger_chain c WHERE c.account = ledger_accounts.id);
DROP TABLE ledger_chain;

DROP INDEX transfers_by_debit;
DROP INDEX transfers_by_credit;
