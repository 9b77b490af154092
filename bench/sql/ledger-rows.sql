-- What each of the rows a P2P transfer writes costs a PostgreSQL backend,
-- apart from HTTP, the writer and the load generator (BENCHMARKS.md,
-- "Where a transfer's CPU goes"). On a scratch database with the ledger's
-- migrations applied:
--
--   createdb -h 127.0.0.1 -U postgres ledger_rows
--   for f in migrations/postgres/*.sql; do psql -h 127.0.0.1 -U postgres -d ledger_rows -q -f "$f"; done
--   psql -h 127.0.0.1 -U postgres -d ledger_rows -q -f bench/sql/ledger-rows.sql
--   psql -h 127.0.0.1 -U postgres -d ledger_rows -c "CALL ledger_rows(1500, 26, 'all')"
--
-- Each call writes `batches` batches of `size` transfers between random
-- wallets among 10,000, each batch one statement and one commit, as the
-- ledger's writer does, and reports the backend's own CPU time (user and
-- system, read from /proc/self/stat, so a superuser on Linux) per
-- transfer. Variants: `none` builds the batch's arrays and writes nothing
-- (subtract it from the others); `all` writes what a transfer writes (the
-- transfer row, its two accounts' balances, its idempotency key);
-- `transfers`, `accounts` and `keys` one of those alone; `keyed` the
-- transfer row carrying its key's columns under a unique index, with no key
-- row. The arrays are built in PL/pgSQL, which costs more than the
-- writer's bound arrays: compare variants with each other, not with the
-- benchmark's figures.

INSERT INTO ledger_accounts (id, kind, region, currency, balance, created_at, usage_month_start)
SELECT gen_random_uuid()::text, 'wallet', 'RU', 'RUB', 100000000, 0, 0 FROM generate_series(1, 10000);
VACUUM ANALYZE ledger_accounts;

CREATE TABLE transfers_keyed (LIKE transfers INCLUDING ALL);
ALTER TABLE transfers_keyed
    ADD COLUMN idempotency_scope TEXT,
    ADD COLUMN idempotency_key TEXT,
    ADD COLUMN fingerprint TEXT,
    ADD COLUMN status BIGINT;
CREATE UNIQUE INDEX transfers_keyed_by_key ON transfers_keyed (idempotency_key, idempotency_scope);

CREATE FUNCTION backend_cpu_s() RETURNS DOUBLE PRECISION LANGUAGE SQL AS $$
    -- utime and stime, the 14th and 15th fields, in clock ticks of 1/100 s.
    SELECT (f[12]::BIGINT + f[13]::BIGINT) / 100.0
    FROM (SELECT string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ') AS f) AS s
$$;

CREATE PROCEDURE ledger_rows(batches INT, size INT, variant TEXT) LANGUAGE plpgsql AS $$
DECLARE
    ids TEXT[];
    wallets INT;
    base INT;
    now_ms BIGINT;
    started DOUBLE PRECISION := backend_cpu_s();
    t_id TEXT[]; t_debit TEXT[]; t_credit TEXT[]; t_amount INT8[]; t_debit_prev TEXT[]; t_credit_prev TEXT[];
    a_id TEXT[]; a_balance INT8[]; a_last TEXT[];
    k_scope TEXT[]; k_key TEXT[]; k_fingerprint TEXT[]; k_body TEXT[];
    written BIGINT;
BEGIN
    IF variant NOT IN ('none', 'all', 'transfers', 'accounts', 'keys', 'keyed') THEN
        RAISE EXCEPTION 'no variant %', variant;
    END IF;
    SELECT array_agg(id ORDER BY id) INTO ids FROM ledger_accounts WHERE kind = 'wallet';
    wallets := array_length(ids, 1);
    FOR b IN 1..batches LOOP
        -- Distinct wallets within a batch, as the writer's batch has them.
        base := floor(random() * wallets)::INT;
        now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
        SELECT array_agg(gen_random_uuid()::TEXT), array_agg(ids[1 + (base + 2 * i) % wallets]),
               array_agg(ids[1 + (base + 2 * i + 1) % wallets]), array_agg(100::INT8 + i),
               array_agg(gen_random_uuid()::TEXT), array_agg(gen_random_uuid()::TEXT),
               array_agg('account:' || ids[1 + (base + 2 * i) % wallets]), array_agg(gen_random_uuid()::TEXT),
               array_agg(md5(i::TEXT) || md5(b::TEXT)), array_agg(repeat('x', 330))
          INTO t_id, t_debit, t_credit, t_amount, t_debit_prev, t_credit_prev, k_scope, k_key, k_fingerprint, k_body
          FROM generate_series(0, size - 1) AS i;
        a_id := t_debit || t_credit;
        SELECT array_agg(1000::INT8), array_agg(t_id[1]) INTO a_balance, a_last FROM unnest(a_id);
        IF variant = 'all' THEN
            WITH moved AS (
                INSERT INTO transfers (id, kind, debit_account, credit_account, amount, fee, currency, region,
                    initiator, created_at, debit_prev, credit_prev, debit_balance, credit_balance)
                SELECT u.id, 'p2p', u.debit, u.credit, u.amount, 0, 'RUB', 'RU', u.debit, now_ms, u.debit_prev,
                    u.credit_prev, 1000, 1000
                FROM UNNEST(t_id, t_debit, t_credit, t_amount, t_debit_prev, t_credit_prev)
                    AS u (id, debit, credit, amount, debit_prev, credit_prev)
                RETURNING 1
            ), changed AS (
                UPDATE ledger_accounts AS a SET balance = c.balance, last_transfer = c.last_transfer,
                    usage_day_start = now_ms, usage_day = a.usage_day + 1, usage_month = a.usage_month + 1
                FROM UNNEST(a_id, a_balance, a_last) AS c (id, balance, last_transfer) WHERE a.id = c.id
                RETURNING 1
            ), keyed AS (
                INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
                SELECT k.scope, k.key, k.fingerprint, 201, k.body, now_ms
                FROM UNNEST(k_scope, k_key, k_fingerprint, k_body) AS k (scope, key, fingerprint, body)
                ON CONFLICT (key, scope) DO NOTHING
                RETURNING 1
            ) SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM changed) + (SELECT count(*) FROM keyed)
              INTO written;
        ELSIF variant = 'transfers' THEN
            INSERT INTO transfers (id, kind, debit_account, credit_account, amount, fee, currency, region,
                initiator, created_at, debit_prev, credit_prev, debit_balance, credit_balance)
            SELECT u.id, 'p2p', u.debit, u.credit, u.amount, 0, 'RUB', 'RU', u.debit, now_ms, u.debit_prev,
                u.credit_prev, 1000, 1000
            FROM UNNEST(t_id, t_debit, t_credit, t_amount, t_debit_prev, t_credit_prev)
                AS u (id, debit, credit, amount, debit_prev, credit_prev);
        ELSIF variant = 'accounts' THEN
            UPDATE ledger_accounts AS a SET balance = c.balance, last_transfer = c.last_transfer,
                usage_day_start = now_ms, usage_day = a.usage_day + 1, usage_month = a.usage_month + 1
            FROM UNNEST(a_id, a_balance, a_last) AS c (id, balance, last_transfer) WHERE a.id = c.id;
        ELSIF variant = 'keys' THEN
            INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
            SELECT k.scope, k.key, k.fingerprint, 201, k.body, now_ms
            FROM UNNEST(k_scope, k_key, k_fingerprint, k_body) AS k (scope, key, fingerprint, body)
            ON CONFLICT (key, scope) DO NOTHING;
        ELSIF variant = 'keyed' THEN
            INSERT INTO transfers_keyed (id, kind, debit_account, credit_account, amount, fee, currency, region,
                initiator, created_at, debit_prev, credit_prev, debit_balance, credit_balance,
                idempotency_scope, idempotency_key, fingerprint, status)
            SELECT u.id, 'p2p', u.debit, u.credit, u.amount, 0, 'RUB', 'RU', u.debit, now_ms, u.debit_prev,
                u.credit_prev, 1000, 1000, u.scope, u.key, u.fingerprint, 201
            FROM UNNEST(t_id, t_debit, t_credit, t_amount, t_debit_prev, t_credit_prev, k_scope, k_key, k_fingerprint)
                AS u (id, debit, credit, amount, debit_prev, credit_prev, scope, key, fingerprint)
            ON CONFLICT (idempotency_key, idempotency_scope) DO NOTHING;
        END IF;
        COMMIT;
    END LOOP;
    RAISE NOTICE '%: % us of backend CPU a transfer', variant,
        round(((backend_cpu_s() - started) * 1e6 / (batches * size))::NUMERIC, 1);
END
$$;
