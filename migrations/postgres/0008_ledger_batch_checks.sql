-- The ledger writer's batch statement ends by checking what it wrote; when
-- the check fails, this raises the error that rolls the whole batch back,
-- with a SQLSTATE of the ledger's own so that the writer can tell the cases
-- apart without reading messages (which follow lc_messages):
--   CLKEY  an idempotency key of the batch was stored before (the writer
--          then looks the batch's keys up and applies the batch again);
--   CLROW  the batch wrote other rows than it meant (a bug).
-- VOLATILE, so that the planner never evaluates it ahead of the check.
CREATE FUNCTION ledger_batch_refused(code TEXT, message TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
END
$$;

-- Transfers are append-only and made in time order, so a block-range index
-- finds a period's transfers (usage counting, reports) as a B-tree did, at a
-- fraction of the cost per insert: a B-tree took an entry per transfer, the
-- block-range index changes only when a page range's summary does.
DROP INDEX transfers_by_time;
CREATE INDEX transfers_by_time ON transfers USING brin (created_at);
