-- The core account system. Times are milliseconds since the Unix epoch.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    phone       TEXT NOT NULL,            -- E.164
    region      TEXT NOT NULL,            -- ISO 3166-1 alpha-2, derived from the number
    calls_from  TEXT NOT NULL DEFAULT 'everybody' CHECK (calls_from IN ('everybody', 'nobody')),
    p2p         TEXT NOT NULL DEFAULT 'always' CHECK (p2p IN ('always', 'never')),
    created_at  BIGINT NOT NULL,
    CONSTRAINT accounts_phone_unique UNIQUE (phone)
);

CREATE TABLE sign_in_codes (
    id          TEXT PRIMARY KEY,
    phone       TEXT NOT NULL,
    code_digest TEXT NOT NULL,            -- SHA-256(id ':' code), never the code
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    used_at     BIGINT
);
CREATE INDEX sign_in_codes_by_phone ON sign_in_codes (phone, created_at);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);
CREATE INDEX devices_by_account ON devices (account_id, id);

CREATE TABLE refresh_tokens (
    token_digest TEXT PRIMARY KEY,        -- SHA-256 of the token, never the token
    device_id    TEXT NOT NULL REFERENCES devices (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    spent_at     BIGINT
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (device_id);

CREATE TABLE blocks (
    account_id  TEXT NOT NULL REFERENCES accounts (id),
    blocked_id  TEXT NOT NULL REFERENCES accounts (id),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, blocked_id)
);

CREATE TABLE operators (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'approver', 'admin')),
    key_digest  TEXT NOT NULL,            -- SHA-256 of the API key, never the key
    created_at  BIGINT NOT NULL,
    created_by  TEXT,                     -- NULL for the bootstrap admin
    revoked_at  BIGINT,
    CONSTRAINT operators_key_unique UNIQUE (key_digest)
);
