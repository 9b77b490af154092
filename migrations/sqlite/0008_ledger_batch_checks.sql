-- PostgreSQL only (its batch statement's error function, and a block-range
-- index for transfers by time); SQLite's ledger writer checks each row as
-- it writes it, and SQLite has no block-range indexes. Both dialects keep
-- the same migration versions.
SELECT 1;
