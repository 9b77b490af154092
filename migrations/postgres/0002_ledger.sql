-- The ledger. Amounts are integer minor units; times are milliseconds since
-- the Unix epoch. Transfers are append-only: never updated, never deleted.

CREATE TABLE regions (
    code              TEXT PRIMARY KEY,          -- ISO 3166-1 alpha-2
    enabled           BIGINT NOT NULL CHECK (enabled IN (0, 1)),
    currency          TEXT NOT NULL,             -- ISO 4217
    time_zone         TEXT NOT NULL,             -- IANA
    per_transfer_max  BIGINT NOT NULL CHECK (per_transfer_max > 0),
    daily_max         BIGINT NOT NULL CHECK (daily_max > 0),
    monthly_max       BIGINT NOT NULL CHECK (monthly_max > 0),
    night_max         BIGINT CHECK (night_max IS NULL OR night_max > 0),
    night_start_hour  BIGINT NOT NULL CHECK (night_start_hour BETWEEN 0 AND 23),
    night_end_hour    BIGINT NOT NULL CHECK (night_end_hour BETWEEN 0 AND 23),
    fee_free_monthly  BIGINT,                    -- NULL: no fee
    fee_rate_bp       BIGINT,
    fee_cap           BIGINT,
    updated_at        BIGINT NOT NULL
);

INSERT INTO regions VALUES
    ('RU', 1, 'RUB', 'Europe/Moscow', 10000000, 15000000, 60000000, NULL, 20, 6, 10000000, 50, 150000, 0),
    ('BR', 1, 'BRL', 'America/Sao_Paulo', 500000, 1000000, 5000000, 100000, 20, 6, NULL, NULL, NULL, 0);

CREATE TABLE ledger_accounts (
    id             TEXT PRIMARY KEY,             -- the user's account id for a wallet; sys:RU:settlement …
    kind           TEXT NOT NULL CHECK (kind IN ('wallet', 'settlement', 'fee_revenue', 'adjustments')),
    region         TEXT NOT NULL REFERENCES regions (code),
    currency       TEXT NOT NULL,
    balance        BIGINT NOT NULL DEFAULT 0,
    frozen         BIGINT NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1)),
    created_at     BIGINT NOT NULL,
    CONSTRAINT wallet_not_negative CHECK (kind <> 'wallet' OR balance >= 0)
);

INSERT INTO ledger_accounts (id, kind, region, currency, created_at) VALUES
    ('sys:RU:settlement', 'settlement', 'RU', 'RUB', 0),
    ('sys:RU:fee_revenue', 'fee_revenue', 'RU', 'RUB', 0),
    ('sys:RU:adjustments', 'adjustments', 'RU', 'RUB', 0),
    ('sys:BR:settlement', 'settlement', 'BR', 'BRL', 0),
    ('sys:BR:fee_revenue', 'fee_revenue', 'BR', 'BRL', 0),
    ('sys:BR:adjustments', 'adjustments', 'BR', 'BRL', 0);

CREATE TABLE transfers (
    id              TEXT PRIMARY KEY,            -- UUIDv7: sorts by creation
    kind            TEXT NOT NULL CHECK (kind IN ('p2p', 'fee', 'deposit', 'withdrawal', 'reversal', 'adjustment')),
    debit_account   TEXT NOT NULL REFERENCES ledger_accounts (id),
    credit_account  TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    fee             BIGINT NOT NULL DEFAULT 0,   -- on a p2p transfer: what its linked fee transfer carries
    currency        TEXT NOT NULL,
    region          TEXT NOT NULL,
    linked_id       TEXT REFERENCES transfers (id),
    initiator       TEXT NOT NULL,               -- account id or operator id
    note            TEXT,
    external_ref    TEXT,
    created_at      BIGINT NOT NULL,
    CONSTRAINT transfer_between_two_accounts CHECK (debit_account <> credit_account)
);
CREATE INDEX transfers_by_debit ON transfers (debit_account, id);
CREATE INDEX transfers_by_credit ON transfers (credit_account, id);
CREATE INDEX transfers_by_time ON transfers (created_at);

-- Idempotency keys, scoped per principal (an account, or an operator). The
-- response is kept whole so that a retry gets the very same answer.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,                  -- SHA-256 of method, path and canonical body
    status       BIGINT NOT NULL,
    body         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
