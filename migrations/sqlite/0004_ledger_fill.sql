-- PostgreSQL's migration 4 sets a fill factor on ledger_accounts; SQLite
-- has no such setting, and its migration 4 changes nothing.
SELECT 1;
