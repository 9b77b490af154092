-- Call records (signaling). Times are milliseconds since the Unix epoch.

CREATE TABLE calls (
    id             TEXT PRIMARY KEY,      -- chosen by the caller; never reused
    caller_id      TEXT NOT NULL REFERENCES accounts (id),
    callee_id      TEXT NOT NULL REFERENCES accounts (id),
    caller_device  TEXT NOT NULL,
    answer_device  TEXT,
    ice_policy     TEXT NOT NULL CHECK (ice_policy IN ('all', 'relay')),
    started_at     BIGINT NOT NULL,
    answered_at    BIGINT,
    ended_at       BIGINT,
    end_reason     TEXT
);
CREATE INDEX calls_by_caller ON calls (caller_id, started_at, id);
CREATE INDEX calls_by_callee ON calls (callee_id, started_at, id);

-- What each party of a call reported: its rating and its client's figures.
CREATE TABLE call_reports (
    call_id          TEXT NOT NULL REFERENCES calls (id),
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    rating           BIGINT CHECK (rating BETWEEN 1 AND 5),
    problems         TEXT,                -- comma-separated tags
    comment          TEXT,
    rated_at         BIGINT,
    rtt_ms           DOUBLE PRECISION,
    jitter_ms        DOUBLE PRECISION,
    packet_loss_pct  DOUBLE PRECISION,
    bitrate_kbps     DOUBLE PRECISION,
    candidate_type   TEXT CHECK (candidate_type IN ('host', 'srflx', 'prflx', 'relay')),
    setup_ms         DOUBLE PRECISION,
    stats_at         BIGINT,
    PRIMARY KEY (call_id, account_id)
);
