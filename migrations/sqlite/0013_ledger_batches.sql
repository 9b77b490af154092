-- Nothing on SQLite: its writer commits one batch at a time, and the
-- database lets one writer in at a time (migration 13 on PostgreSQL counts
-- batches that are sent while the previous one is still committing).
SELECT 1;
