-- Transfers no longer carry foreign keys to the ledger accounts (nor to
-- their linked P2P transfer). The ledger writer is the only writer of
-- transfers: every account a batch posts to is loaded from ledger_accounts
-- before the batch is applied, and the batch's invariant check refuses a
-- transfer that names an account the writer did not load (README, "How the
-- ledger writes"). Reconciliation reports any transfer whose account does
-- not exist. Each foreign key was a row-locking query per transfer row, run
-- by a trigger: about a fifth of the writer's database time.
ALTER TABLE transfers
    DROP CONSTRAINT transfers_debit_account_fkey,
    DROP CONSTRAINT transfers_credit_account_fkey,
    DROP CONSTRAINT transfers_linked_id_fkey;
