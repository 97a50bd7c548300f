-- Leadership, leases and the audit trail of the cluster.

CREATE TABLE IF NOT EXISTS ha_instances (
    instance_id        text PRIMARY KEY,
    cluster_name       text NOT NULL,
    -- A fresh random token per process: renewals are scoped to it, so a second
    -- process started with the same INSTANCE_ID can never renew this lease.
    process_token      uuid NOT NULL,
    host               text NOT NULL,
    pid                integer NOT NULL,
    version            text NOT NULL,
    mode               text NOT NULL,
    role               text NOT NULL,
    http_url           text,
    started_at         timestamptz NOT NULL,
    heartbeat_at       timestamptz NOT NULL,
    -- The lock connection's backend, identified by pid AND start time (pids recycle).
    backend_pid        integer,
    backend_started_at timestamptz,
    leader_epoch       bigint,
    stopped_at         timestamptz,
    stats              jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS idx_ha_instances_cluster ON ha_instances (cluster_name);

CREATE TABLE IF NOT EXISTS ha_leadership (
    cluster_name       text PRIMARY KEY,
    -- The fencing token: bumped in the transaction that records a new leader, checked
    -- FOR SHARE by every flush transaction.
    epoch              bigint NOT NULL DEFAULT 0,
    leader_instance_id text,
    leader_token       uuid,
    acquired_at        timestamptz,
    released_at        timestamptz,
    ended_reason       text,
    last_flush_at      timestamptz,
    flush_seq          bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS ha_handovers (
    id               bigserial PRIMARY KEY,
    cluster_name     text NOT NULL,
    epoch            bigint NOT NULL,
    from_instance_id text,
    to_instance_id   text NOT NULL,
    reason           text NOT NULL,
    gap_ms           integer,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_ha_handovers_cluster_at ON ha_handovers (cluster_name, at DESC);

CREATE TABLE IF NOT EXISTS ha_alerts (
    id               bigserial PRIMARY KEY,
    cluster_name     text NOT NULL,
    kind             text NOT NULL,
    level            text NOT NULL,
    service          text NOT NULL,
    message          text NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    last_notified_at timestamptz,
    instance_id      text
);
CREATE INDEX IF NOT EXISTS idx_ha_alerts_cluster_opened ON ha_alerts (cluster_name, opened_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS uk_ha_alerts_open_kind
    ON ha_alerts (cluster_name, kind) WHERE resolved_at IS NULL;

CREATE TABLE IF NOT EXISTS ingest_rejects (
    id             bigserial PRIMARY KEY,
    topic          text NOT NULL,
    payload        bytea NOT NULL,
    payload_sha256 text NOT NULL,
    reason         text NOT NULL,
    received_at    timestamptz NOT NULL,
    instance_id    text NOT NULL,
    ha_epoch       bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Every instance derives the same key from the same message, so a reject written
    -- by a leader and again by its successor is one row.
    CONSTRAINT uk_ingest_rejects_message UNIQUE (topic, payload_sha256)
);
CREATE INDEX IF NOT EXISTS idx_ingest_rejects_created_at ON ingest_rejects (created_at DESC);
