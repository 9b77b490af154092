-- The ledger writer's batches, counted. Every batch statement on PostgreSQL
-- adds one and checks that it got the count it expected, so that a batch
-- commits only after the batch it was built on has committed, and never
-- when that one did not. The writer sends a batch while the previous one's
-- commit is still being flushed; the count is what ties the two together
-- (and, should a writer that lost its lock still have a batch in flight, it
-- refuses its successor's first batch rather than let the two interleave).
CREATE TABLE ledger_batches (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    committed BIGINT NOT NULL
);
INSERT INTO ledger_batches VALUES (1, 0);
