-- Finance ops. A frozen wallet keeps why, by which operator and when it
-- was frozen (shown in the account view; cleared when it is unfrozen).
ALTER TABLE ledger_accounts ADD COLUMN frozen_reason TEXT;
ALTER TABLE ledger_accounts ADD COLUMN frozen_by TEXT;     -- an operator id
ALTER TABLE ledger_accounts ADD COLUMN frozen_at BIGINT;

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
