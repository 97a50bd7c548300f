-- Named queries, loaded once by aupus_ha/queries.py and used by name.
-- Format: a line "-- name: <name>", comment lines saying what it does and the order of
-- its $n parameters, then the SQL up to the next "-- name:".
-- {id_type} and {ts_type} are filled once at start from a fixed whitelist with the
-- column types of equipamentos_dados (text/bpchar, timestamptz/timestamp); every value
-- is a $n parameter.

-- name: backend_identity
-- The lock connection's backend: pid and start time (together they name a session).
SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();

-- name: instance_for_update
-- $1 instance_id. The current lease row of this INSTANCE_ID, locked, with liveness.
SELECT i.process_token,
       i.stopped_at IS NOT NULL AS stopped,
       extract(epoch FROM now() - i.heartbeat_at)::float8 AS heartbeat_age_s,
       EXISTS (
           SELECT 1 FROM pg_stat_activity a
           WHERE a.pid = i.backend_pid AND a.backend_start = i.backend_started_at
       ) AS backend_alive,
       i.host, i.pid
FROM ha_instances i
WHERE i.instance_id = $1
FOR UPDATE;

-- name: upsert_instance
-- $1 instance_id, $2 cluster_name, $3 process_token, $4 host, $5 pid, $6 version,
-- $7 mode, $8 role, $9 http_url. Claims the lease row for this process.
INSERT INTO ha_instances AS i (
    instance_id, cluster_name, process_token, host, pid, version, mode, role, http_url,
    started_at, heartbeat_at, backend_pid, backend_started_at, leader_epoch, stopped_at
)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now(), a.pid, a.backend_start, NULL, NULL
FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()
ON CONFLICT (instance_id) DO UPDATE SET
    cluster_name = excluded.cluster_name, process_token = excluded.process_token,
    host = excluded.host, pid = excluded.pid, version = excluded.version,
    mode = excluded.mode, role = excluded.role, http_url = excluded.http_url,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    backend_pid = excluded.backend_pid, backend_started_at = excluded.backend_started_at,
    leader_epoch = NULL, stopped_at = NULL;

-- name: standby_heartbeat
-- $1 instance_id, $2 process_token, $3 role, $4 stats (jsonb).
-- Zero rows means another process has taken this lease row over.
UPDATE ha_instances
SET heartbeat_at = now(), role = $3, stats = $4, leader_epoch = NULL
WHERE instance_id = $1 AND process_token = $2
RETURNING 1;

-- name: leader_renew
-- $1 instance_id, $2 process_token, $3 epoch, $4 stats (jsonb), $5 cluster_name,
-- $6 lock key 1, $7 lock key 2. One round trip: renews the lease (scoped to process and
-- epoch) and reports whether the epoch (and the token that leads it) is still ours and
-- our backend still holds the lock.
WITH renewed AS (
    UPDATE ha_instances
    SET heartbeat_at = now(), role = 'leader', stats = $4
    WHERE instance_id = $1 AND process_token = $2 AND leader_epoch = $3
    RETURNING 1
)
SELECT (SELECT count(*) FROM renewed) = 1 AS renewed,
       (SELECT epoch FROM ha_leadership WHERE cluster_name = $5) AS epoch,
       (SELECT leader_token::text FROM ha_leadership WHERE cluster_name = $5) AS leader_token,
       EXISTS (
           SELECT 1 FROM pg_locks
           WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
             AND classid = $6::int4::oid AND objid = $7::int4::oid AND objsubid = 2
       ) AS lock_held;

-- name: try_lock
-- $1 lock key 1, $2 lock key 2. Session-level: held until released or the session ends.
SELECT pg_try_advisory_lock($1::int4, $2::int4);

-- name: unlock
-- $1 lock key 1, $2 lock key 2.
SELECT pg_advisory_unlock($1::int4, $2::int4);

-- name: ensure_leadership_row
-- $1 cluster_name.
INSERT INTO ha_leadership (cluster_name) VALUES ($1) ON CONFLICT (cluster_name) DO NOTHING;

-- name: leadership_for_update
-- $1 cluster_name. The previous leader and how its term ended, locked for the bump.
SELECT l.epoch, l.leader_instance_id, l.leader_token::text AS leader_token, l.released_at,
       l.ended_reason, i.heartbeat_at AS leader_heartbeat_at
FROM ha_leadership l
LEFT JOIN ha_instances i ON i.instance_id = l.leader_instance_id
WHERE l.cluster_name = $1
FOR UPDATE OF l;

-- name: server_started
-- When the running server last (re)started, and the database's now(): the postmaster's
-- start, or a later crash restart of shared memory (the checkpointer restarts with it;
-- its row is only visible to superusers and pg_read_all_stats members, else NULL).
SELECT greatest(
           pg_postmaster_start_time(),
           (SELECT max(backend_start) FROM pg_stat_activity WHERE backend_type = 'checkpointer')
       ) AS started_at,
       now() AS db_now;

-- name: bump_epoch
-- $1 cluster_name, $2 instance_id, $3 process_token. The new term; returns its epoch.
UPDATE ha_leadership
SET epoch = epoch + 1, leader_instance_id = $2, leader_token = $3, acquired_at = now(),
    released_at = NULL, ended_reason = NULL
WHERE cluster_name = $1
RETURNING epoch, acquired_at;

-- name: mark_instance_leader
-- $1 instance_id, $2 process_token, $3 epoch. Zero rows: our lease row was taken over.
UPDATE ha_instances SET role = 'leader', leader_epoch = $3, heartbeat_at = now()
WHERE instance_id = $1 AND process_token = $2
RETURNING 1;

-- name: record_handover
-- $1 cluster_name, $2 epoch, $3 from_instance_id, $4 to_instance_id, $5 reason, $6 gap_ms.
INSERT INTO ha_handovers (cluster_name, epoch, from_instance_id, to_instance_id, reason, gap_ms)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: release_leadership
-- $1 cluster_name, $2 epoch, $3 process_token. Ends our term if it is still ours.
UPDATE ha_leadership SET released_at = now(), ended_reason = 'released'
WHERE cluster_name = $1 AND epoch = $2 AND leader_token = $3
RETURNING 1;

-- name: mark_instance_stopped
-- $1 instance_id, $2 process_token, $3 role.
UPDATE ha_instances
SET role = $3, leader_epoch = NULL, stopped_at = now(), heartbeat_at = now()
WHERE instance_id = $1 AND process_token = $2;

-- name: lock_holder
-- $1 lock key 1, $2 lock key 2, $3 cluster_name. Who holds the cluster lock now, and the
-- lease row (if any) of that backend, with its heartbeat age measured on the DB clock.
SELECT l.pid AS holder_pid,
       i.instance_id, i.process_token, i.leader_epoch,
       extract(epoch FROM now() - i.heartbeat_at)::float8 AS heartbeat_age_s,
       a.application_name
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN ha_instances i
       ON i.backend_pid = l.pid AND i.backend_started_at = a.backend_start
      AND i.cluster_name = $3
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2;

-- name: terminate_process_backends
-- $1 application_name of the silent process. Ends every session of that process: the
-- lock connection (releasing the lock) and any pooled connection inside a flush.
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS terminated
FROM pg_stat_activity
WHERE application_name = $1 AND pid <> pg_backend_pid();

-- name: mark_evicted
-- $1 cluster_name, $2 instance_id of the evicted leader.
UPDATE ha_leadership SET ended_reason = 'evicted'
WHERE cluster_name = $1 AND leader_instance_id = $2 AND released_at IS NULL;

-- name: standby_with_broker
-- $1 cluster_name, $2 our instance_id, $3 lease TTL in seconds. Another live standby
-- that reports an MQTT connection (in the stats of its heartbeat).
SELECT EXISTS (
    SELECT 1 FROM ha_instances
    WHERE cluster_name = $1 AND instance_id <> $2 AND role = 'standby'
      AND stopped_at IS NULL
      AND heartbeat_at > now() - make_interval(secs => $3)
      AND coalesce((stats ->> 'mqtt_connected')::boolean, false)
);

-- name: fence_check
-- $1 cluster_name, $2 process_token of the writer (NULL: compare the epoch alone).
-- First statement of every flush transaction: the shared row lock keeps the epoch from
-- moving until this transaction ends. `ours` is false when another process leads this
-- epoch (an epoch handed out twice, e.g. a bump lost in a failover to a replica).
SELECT epoch, ($2::text IS NULL OR leader_token::text = $2::text) AS ours
FROM ha_leadership WHERE cluster_name = $1 FOR SHARE;

-- name: create_staging
-- Per connection, once: the COPY target, with the exact column types of the table.
CREATE TEMP TABLE IF NOT EXISTS aupus_staging ON COMMIT DELETE ROWS AS
SELECT equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
       potencia_ativa_kw, num_leituras, timestamp_fim
FROM equipamentos_dados WITH NO DATA;

-- name: insert_from_staging
-- $1 epoch. Duplicates (already written by a previous leader) are skipped, never errors.
WITH inserted AS (
    INSERT INTO equipamentos_dados (
        equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
        potencia_ativa_kw, num_leituras, timestamp_fim, ha_epoch
    )
    SELECT equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
           potencia_ativa_kw, num_leituras, timestamp_fim, $1
    FROM aupus_staging
    ON CONFLICT (equipamento_id, timestamp_dados) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted;

-- name: create_staging_clockless
-- Per connection, once: the COPY target of the readings timed by arrival, which are
-- inserted by insert_clockless_from_staging (same columns as aupus_staging).
CREATE TEMP TABLE IF NOT EXISTS aupus_staging_clockless ON COMMIT DELETE ROWS AS
SELECT equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
       potencia_ativa_kw, num_leituras, timestamp_fim
FROM equipamentos_dados WITH NO DATA;

-- name: insert_clockless_from_staging
-- $1 epoch, $2 the matching window in seconds. Readings timed by arrival: every
-- instance keys one by its OWN arrival time, so a copy of a stored reading (another
-- instance's, an MQTT redelivery) has another key. One is inserted only when no stored
-- row of the same equipment keyed within the window around it has equal dados (jsonb:
-- key order and spacing do not matter), and no copy of it comes earlier in the batch
-- (keyed within the window of the previous one). The stored-row check is one short
-- range scan of the natural key per staged reading: LATERAL ... LIMIT 1 keeps it a
-- parameterised index scan whatever the planner guesses about the unanalysed temp
-- table. The flush's epoch fence serialises writers, so the check sees every row the
-- previous leader committed.
WITH staged AS (
    SELECT s.*,
           lag(s.timestamp_dados) OVER (
               PARTITION BY s.equipamento_id, s.dados::jsonb ORDER BY s.timestamp_dados
           ) AS previous_copy_at
    FROM aupus_staging_clockless s
), inserted AS (
    INSERT INTO equipamentos_dados (
        equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
        potencia_ativa_kw, num_leituras, timestamp_fim, ha_epoch
    )
    SELECT st.equipamento_id, st.timestamp_dados, st.dados, st.fonte, st.qualidade,
           st.energia_kwh, st.potencia_ativa_kw, st.num_leituras, st.timestamp_fim, $1
    FROM staged st
    LEFT JOIN LATERAL (
        SELECT true AS found
        FROM equipamentos_dados d
        WHERE d.equipamento_id = st.equipamento_id
          AND d.timestamp_dados BETWEEN st.timestamp_dados - make_interval(secs => $2)
                                    AND st.timestamp_dados + make_interval(secs => $2)
          AND d.dados::jsonb = st.dados::jsonb
        LIMIT 1
    ) AS stored ON true
    WHERE stored.found IS NULL
      AND (st.previous_copy_at IS NULL
           OR st.timestamp_dados - st.previous_copy_at > make_interval(secs => $2))
    ON CONFLICT (equipamento_id, timestamp_dados) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted;

-- name: rollup_rows_for_update
-- $1 equipamento ids, $2 minute starts (parallel arrays). The stored rollup rows of
-- these minutes, locked: their samples are merged with the new ones in this transaction.
SELECT d.equipamento_id::text AS equipamento_id, d.timestamp_dados, d.dados
FROM equipamentos_dados d
JOIN unnest($1::{id_type}[], $2::{ts_type}[]) AS k(equipamento_id, ts)
  ON d.equipamento_id = k.equipamento_id AND d.timestamp_dados = k.ts
FOR UPDATE OF d;

-- name: upsert_rollup
-- $1 equipamento_id, $2 minute start, $3 dados, $4 qualidade, $5 energia_kwh,
-- $6 potencia_ativa_kw, $7 num_leituras, $8 timestamp_fim, $9 epoch. The row recomputed
-- from the union of stored and new samples replaces the stored one.
INSERT INTO equipamentos_dados (
    equipamento_id, timestamp_dados, dados, fonte, qualidade, energia_kwh,
    potencia_ativa_kw, num_leituras, timestamp_fim, ha_epoch
)
VALUES ($1, $2, $3, 'MQTT', $4, $5, $6, $7, $8, $9)
ON CONFLICT (equipamento_id, timestamp_dados) DO UPDATE SET
    dados = excluded.dados, qualidade = excluded.qualidade,
    energia_kwh = excluded.energia_kwh, potencia_ativa_kw = excluded.potencia_ativa_kw,
    num_leituras = excluded.num_leituras, timestamp_fim = excluded.timestamp_fim,
    ha_epoch = excluded.ha_epoch;

-- name: insert_reject
-- $1 topic, $2 payload (a bounded prefix), $3 payload_sha256 (of the whole message),
-- $4 reason, $5 received_at, $6 instance_id, $7 epoch, $8 payload_bytes (whole message).
INSERT INTO ingest_rejects (topic, payload, payload_sha256, reason, received_at, instance_id, ha_epoch, payload_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (topic, payload_sha256) DO NOTHING;

-- name: delete_old_rejects
-- $1 age in seconds, $2 batch size. The leader's retention: deletes up to $2 of the
-- oldest rejects stored more than $1 seconds ago, found through
-- idx_ingest_rejects_created_at and deleted by their row address (a Tid Scan, never a
-- pass over the whole table); a row another session holds is skipped, not waited for.
DELETE FROM ingest_rejects
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ingest_rejects
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: record_flush
-- $1 cluster_name. The leader's progress, visible to every instance.
UPDATE ha_leadership SET last_flush_at = now(), flush_seq = flush_seq + 1
WHERE cluster_name = $1;

-- name: summary_previous_rows
-- $1 equipamento ids, $2 timestamps (parallel arrays). For each M-160 reading whose
-- consumo_phf is an outlier (aupus_ha/m160.py), the equipment's last stored rows before
-- it in device time, newest first (up to 4: a reading timed by arrival skips stored
-- copies of itself, keyed by another instance's arrival): the 1-based position,
-- timestamp_dados, phf as text when dados holds a JSON number there (text, so a number
-- beyond a double never fails the flush), and _consumo_phf_bruto as text. Runs inside
-- the flush transaction; a short backward step of the natural key per item, whatever
-- the table's size.
SELECT k.pos, p.timestamp_dados, p.phf, p.bruto
FROM unnest($1::{id_type}[], $2::{ts_type}[]) WITH ORDINALITY AS k(equipamento_id, ts, pos)
CROSS JOIN LATERAL (
    SELECT d.timestamp_dados,
           CASE WHEN jsonb_typeof(d.dados::jsonb -> 'phf') = 'number'
                THEN d.dados::jsonb ->> 'phf' END AS phf,
           d.dados::jsonb ->> '_consumo_phf_bruto' AS bruto
    FROM equipamentos_dados d
    WHERE d.equipamento_id = k.equipamento_id AND d.timestamp_dados < k.ts
    ORDER BY d.timestamp_dados DESC
    LIMIT 4
) AS p
ORDER BY k.pos, p.timestamp_dados DESC;

-- name: probe_readings
-- $1 equipamento ids, $2 timestamps (parallel arrays). Which of a standby's buffered
-- readings are already committed: returns their 1-based positions. Index-backed by the
-- natural key.
SELECT k.pos
FROM unnest($1::{id_type}[], $2::{ts_type}[]) WITH ORDINALITY AS k(equipamento_id, ts, pos)
JOIN equipamentos_dados d
  ON d.equipamento_id = k.equipamento_id AND d.timestamp_dados = k.ts;

-- name: probe_rollup_samples
-- $1 equipamento ids, $2 minute starts, $3 sample keys (parallel arrays). Which rollup
-- samples a standby holds are already inside a stored row: their 1-based positions.
SELECT k.pos
FROM unnest($1::{id_type}[], $2::{ts_type}[], $3::text[])
     WITH ORDINALITY AS k(equipamento_id, ts, sample, pos)
JOIN equipamentos_dados d
  ON d.equipamento_id = k.equipamento_id AND d.timestamp_dados = k.ts
WHERE (d.dados::jsonb -> 'samples') ? k.sample;

-- name: probe_rejects
-- $1 topics, $2 payload hashes (parallel arrays). Same as probe_readings for rejects.
SELECT k.pos
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(topic, sha, pos)
JOIN ingest_rejects r ON r.topic = k.topic AND r.payload_sha256 = k.sha;

-- name: probe_readings_by_content
-- $1 equipamento ids, $2 arrival times, $3 dados as JSON text (parallel arrays), $4 the
-- matching window in seconds. Which of a standby's readings timed by arrival the leader
-- stored under its own arrival time: a row of the same equipment within the window
-- whose dados is equal as jsonb (so key order and spacing do not matter). Returns their
-- 1-based positions. One short range scan of the natural key per reading.
SELECT k.pos
FROM unnest($1::{id_type}[], $2::{ts_type}[], $3::text[])
     WITH ORDINALITY AS k(equipamento_id, ts, dados, pos)
WHERE EXISTS (
    SELECT 1 FROM equipamentos_dados d
    WHERE d.equipamento_id = k.equipamento_id
      AND d.timestamp_dados BETWEEN k.ts - make_interval(secs => $4)
                                AND k.ts + make_interval(secs => $4)
      AND d.dados::jsonb = k.dados::jsonb
);

-- name: leader_progress
-- $1 cluster_name. The live leader's flush progress, as its last heartbeat published
-- it in its stats, turned into ages on the database clock (host clocks do not matter):
-- lag_s = the leader had processed everything that reached it more than lag_s seconds
-- ago (the heartbeat's age plus the backlog age it reported); connected_for_s = how long
-- its broker connection has been up. Either is null when not published (a previous
-- version publishes neither). No row: no live leader.
SELECT extract(epoch FROM now() - i.heartbeat_at)::float8
           + CASE WHEN jsonb_typeof(i.stats -> 'backlog_age_s') = 'number'
                  THEN (i.stats ->> 'backlog_age_s')::float8 END AS lag_s,
       extract(epoch FROM now() - i.heartbeat_at)::float8
           + CASE WHEN jsonb_typeof(i.stats -> 'mqtt_connected_for_s') = 'number'
                  THEN (i.stats ->> 'mqtt_connected_for_s')::float8 END AS connected_for_s
FROM ha_leadership l
JOIN ha_instances i
  ON i.instance_id = l.leader_instance_id AND i.leader_epoch = l.epoch
WHERE l.cluster_name = $1 AND l.released_at IS NULL AND i.stopped_at IS NULL;

-- name: enabled_equipment
-- Equipment whose topics this cluster subscribes to, with what routes its family: the
-- type's code and its category's name (NULL without a type or a category; migration
-- 007 gives a fresh database the platform's category table).
SELECT e.id::text AS id, e.topico_mqtt AS topic, t.codigo AS type_code,
       c.nome::text AS type_category, t.mqtt_schema::text AS mqtt_schema
FROM equipamentos e
LEFT JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id
LEFT JOIN categorias_equipamentos c ON c.id = t.categoria_id
WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
ORDER BY e.id;

-- name: column_types
-- The types of the key columns of equipamentos_dados and of timestamp_fim (fresh vs
-- legacy convention: a legacy timestamp_fim may be `timestamp without time zone`).
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'equipamentos_dados'
  AND column_name IN ('equipamento_id', 'timestamp_dados', 'timestamp_fim');

-- name: legacy_time_offset
-- Start-up check of a legacy database's time convention (DOMAIN v2: UTC wall time in
-- `timestamp without time zone` columns). Over the $1 most recently created rows (one
-- range of the created_at index), the median of created_at - timestamp_dados in seconds
-- and how many rows it covers. Both are wall times; their difference does not depend on
-- the session's TimeZone. Near 0 when the writers agree; near 3 h when one column holds
-- Brasilia time and the other UTC.
SELECT percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM recent.created_at - recent.timestamp_dados)
       )::float8 AS median_s,
       count(*)::int AS n_rows
FROM (
    SELECT created_at, timestamp_dados
    FROM equipamentos_dados
    WHERE created_at IS NOT NULL
    ORDER BY created_at DESC
    LIMIT $1
) AS recent;

-- name: leadership
-- $1 cluster_name.
SELECT epoch, leader_instance_id, acquired_at, released_at, ended_reason, last_flush_at,
       flush_seq
FROM ha_leadership WHERE cluster_name = $1;

-- name: cluster_instances
-- $1 cluster_name.
SELECT instance_id, host, pid, version, mode, role, http_url, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,
       leader_epoch, stopped_at, stats::text AS stats
FROM ha_instances WHERE cluster_name = $1 ORDER BY instance_id;

-- name: recent_handovers
-- $1 cluster_name, $2 limit.
SELECT epoch, from_instance_id, to_instance_id, reason, gap_ms, at
FROM ha_handovers WHERE cluster_name = $1 ORDER BY at DESC, id DESC LIMIT $2;

-- name: last_data
-- The newest stored reading by arrival (created_at: one step of the created_at index,
-- whatever the type of timestamp_dados), and its age on the database clock.
SELECT max(created_at)::timestamptz AS last_at,
       extract(epoch FROM now() - max(created_at)::timestamptz)::float8 AS age_s
FROM equipamentos_dados;

-- name: ingestion_window
-- $1 window in seconds (24 h), $2 short window in seconds (1 h). Rows stored in the
-- window by quality, and coverage = enabled equipment with a row in the window. One
-- range scan of idx_equipamentos_dados_created_at, grouped per equipment (a few
-- thousand groups at most) and then joined to the enabled ones.
-- The legacy labels 'boa' and 'GOOD' count as good, 'BAD' as bad (old rows of the
-- platform carry them; its own metrics forgot 'boa').
WITH per_equipment AS (
    SELECT equipamento_id,
           count(*) AS total,
           count(*) FILTER (WHERE created_at > now() - make_interval(secs => $2)) AS short_total,
           count(*) FILTER (WHERE qualidade IN ('bom', 'boa', 'GOOD')) AS good,
           count(*) FILTER (WHERE qualidade = 'parcial') AS partial,
           count(*) FILTER (WHERE qualidade IN ('ruim', 'BAD')) AS bad
    FROM equipamentos_dados
    WHERE created_at > now() - make_interval(secs => $1)
    GROUP BY equipamento_id
), enabled AS (
    SELECT e.id FROM equipamentos e
    WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
)
SELECT coalesce(sum(p.total), 0)::bigint AS total,
       coalesce(sum(p.short_total), 0)::bigint AS short_total,
       coalesce(sum(p.good), 0)::bigint AS good,
       coalesce(sum(p.partial), 0)::bigint AS partial,
       coalesce(sum(p.bad), 0)::bigint AS bad,
       (SELECT count(*) FROM enabled) AS equipment_enabled,
       (SELECT count(*) FROM enabled WHERE enabled.id IN
            (SELECT equipamento_id FROM per_equipment)) AS equipment_with_data
FROM per_equipment p;

-- name: rejects_window
-- $1 window in seconds. Rejects stored in the window (idx_ingest_rejects_created_at).
SELECT count(*) FROM ingest_rejects WHERE created_at > now() - make_interval(secs => $1);

-- name: handovers_summary
-- $1 cluster_name, $2 window in seconds. All handovers of the cluster, those in the
-- window, and the newest (idx_ha_handovers_cluster_at).
SELECT count(*) AS total,
       count(*) FILTER (WHERE at > now() - make_interval(secs => $2)) AS recent,
       max(at) AS last_at
FROM ha_handovers WHERE cluster_name = $1;

-- name: diag_equipamentos_ativos
-- $1 window start in the column's type (24 h ago, computed by the caller in the key
-- convention: never compared through the session's TimeZone). The legacy
-- `/api/v1/mqtt/diagnostico/equipamentos` "funcionando": every equipment with rows in
-- the window, its row count there, its newest row's time and quality, and the database
-- clock. Index-backed on any table size: per equipment one backward step of
-- uk_equipamento_timestamp (equipamento_id, timestamp_dados) for the newest row, and
-- only for those inside the window one range count on the same index.
SELECT e.id::text AS id, e.nome::text AS nome, to_jsonb(e) ->> 'tag' AS tag,
       e.topico_mqtt::text AS topico_mqtt, t.codigo::text AS tipo_equipamento,
       newest.timestamp_dados AS ultima_recepcao, newest.qualidade::text AS ultima_qualidade,
       counted.registros AS registros_24h, now() AS db_now
FROM equipamentos e
LEFT JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id
CROSS JOIN LATERAL (
    SELECT d.timestamp_dados, d.qualidade
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id
    ORDER BY d.timestamp_dados DESC
    LIMIT 1
) AS newest
CROSS JOIN LATERAL (
    SELECT count(*)::bigint AS registros
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id AND d.timestamp_dados >= $1::{ts_type}
) AS counted
WHERE newest.timestamp_dados >= $1::{ts_type}
ORDER BY counted.registros DESC, e.id;

-- name: diag_equipamentos_inativos
-- $1 window start in the column's type (as diag_equipamentos_ativos). Enabled
-- equipment (the topic catalogue's filter) without a row in the window: its newest row
-- ever (NULL: never sent anything) by one backward step of uk_equipamento_timestamp,
-- and the database clock.
SELECT e.id::text AS id, e.nome::text AS nome, to_jsonb(e) ->> 'tag' AS tag,
       e.topico_mqtt::text AS topico_mqtt, t.codigo::text AS tipo_equipamento,
       newest.timestamp_dados AS ultima_recepcao_conhecida, now() AS db_now
FROM equipamentos e
LEFT JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id
LEFT JOIN LATERAL (
    SELECT d.timestamp_dados
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id
    ORDER BY d.timestamp_dados DESC
    LIMIT 1
) AS newest ON true
WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
  AND (newest.timestamp_dados IS NULL OR newest.timestamp_dados < $1::{ts_type})
ORDER BY newest.timestamp_dados DESC NULLS LAST, e.id;

-- name: diag_janela
-- $1 window start in the column's type. Rows in the window per equipment and quality
-- label as stored (NULL kept): count, first and last time, and the sum and count of
-- num_leituras. The caller adds them up for the legacy `stats` and `qualidade`. One
-- range of uk_equipamento_timestamp per equipment (the table has no index led by
-- timestamp_dados: a plain range on it would scan the whole table).
SELECT e.id::text AS equipamento_id, w.qualidade::text AS qualidade, w.registros,
       w.primeiro, w.ultimo, w.soma_leituras, w.com_leituras
FROM equipamentos e
CROSS JOIN LATERAL (
    SELECT d.qualidade, count(*)::bigint AS registros,
           min(d.timestamp_dados) AS primeiro, max(d.timestamp_dados) AS ultimo,
           coalesce(sum(d.num_leituras), 0)::bigint AS soma_leituras,
           count(d.num_leituras)::bigint AS com_leituras
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id AND d.timestamp_dados >= $1::{ts_type}
    GROUP BY d.qualidade
) AS w;

-- name: diag_topicos
-- $1 window start in the column's type. Per topic of enabled equipment: how many
-- equipment share it, how many of them have a row in the window, and the newest row
-- (one backward step of uk_equipamento_timestamp per equipment).
SELECT e.topico_mqtt::text AS topico, count(*)::bigint AS quantidade_equipamentos,
       count(*) FILTER (WHERE newest.timestamp_dados >= $1::{ts_type})::bigint
           AS equipamentos_ativos_24h,
       max(newest.timestamp_dados) AS ultima_recepcao
FROM equipamentos e
LEFT JOIN LATERAL (
    SELECT d.timestamp_dados
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id
    ORDER BY d.timestamp_dados DESC
    LIMIT 1
) AS newest ON true
WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
GROUP BY e.topico_mqtt
ORDER BY equipamentos_ativos_24h DESC, quantidade_equipamentos DESC, topico;

-- name: diag_gaps
-- $1 window start in the column's type, $2 minimum gap in seconds, $3 limit. The
-- longest silences between two consecutive rows of one equipment inside the window
-- (one range of uk_equipamento_timestamp per equipment, read in index order). The
-- difference of two values of one column does not depend on any time zone.
SELECT e.nome::text AS nome, e.topico_mqtt::text AS topico_mqtt,
       g.inicio_gap, g.fim_gap,
       extract(epoch FROM g.fim_gap - g.inicio_gap)::float8 AS segundos
FROM equipamentos e
CROSS JOIN LATERAL (
    SELECT s.inicio_gap, s.fim_gap
    FROM (
        SELECT lag(d.timestamp_dados) OVER (ORDER BY d.timestamp_dados) AS inicio_gap,
               d.timestamp_dados AS fim_gap
        FROM equipamentos_dados d
        WHERE d.equipamento_id = e.id AND d.timestamp_dados >= $1::{ts_type}
    ) AS s
    WHERE s.fim_gap - s.inicio_gap > make_interval(secs => $2)
) AS g
ORDER BY segundos DESC, nome
LIMIT $3;

-- name: diag_ultimos
-- $1 limit. The newest stored rows by arrival (one range of the created_at index),
-- with their equipment's name and topic. Times as stored (the caller reads a legacy
-- wall time in LEGACY_TIMESTAMP_ZONE, never through the session's TimeZone).
SELECT d.id::text AS id, e.nome::text AS equipamento, e.topico_mqtt::text AS topico_mqtt,
       d.timestamp_dados, d.created_at, d.fonte::text AS fonte,
       d.qualidade::text AS qualidade, d.num_leituras
FROM equipamentos_dados d
LEFT JOIN equipamentos e ON e.id = d.equipamento_id
WHERE d.created_at IS NOT NULL
ORDER BY d.created_at DESC
LIMIT $1;

-- name: alert_open
-- $1 cluster_name, $2 kind, $3 level, $4 service, $5 message, $6 metadata (json text),
-- $7 instance_id. Opens an alert unless one of that kind is open already (the partial
-- unique index uk_ha_alerts_open_kind); returns the new id, or nothing.
INSERT INTO ha_alerts (cluster_name, kind, level, service, message, metadata, instance_id)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (cluster_name, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id;

-- name: alert_refresh
-- $1 cluster_name, $2 kind, $3 level, $4 message, $5 metadata (json text). Updates the
-- open alert of that kind (uk_ha_alerts_open_kind); returns its id and previous level.
WITH old AS (
    SELECT id, level FROM ha_alerts
    WHERE cluster_name = $1 AND kind = $2 AND resolved_at IS NULL
    FOR UPDATE
)
UPDATE ha_alerts a SET level = $3, message = $4, metadata = $5::jsonb
FROM old WHERE a.id = old.id
RETURNING a.id, old.level AS previous_level;

-- name: alert_claim_notification
-- $1 alert id, $2 cooldown in seconds, $3 force (bool). Marks the alert notified now when
-- forced or its cooldown has run out; returns the id only then (one notifier wins).
UPDATE ha_alerts SET last_notified_at = now()
WHERE id = $1
  AND ($3 OR last_notified_at IS NULL OR last_notified_at < now() - make_interval(secs => $2))
RETURNING id;

-- name: alert_resolve
-- $1 cluster_name, $2 kind. Resolves the open alert of that kind (uk_ha_alerts_open_kind).
UPDATE ha_alerts SET resolved_at = now()
WHERE cluster_name = $1 AND kind = $2 AND resolved_at IS NULL
RETURNING id, level, service, message, opened_at;

-- name: alert_event
-- $1 cluster_name, $2 kind, $3 level, $4 service, $5 message, $6 metadata (json text),
-- $7 instance_id. A one-off alert (handover, fenced write), stored already resolved and
-- notified; nothing when the same kind was stored in the last day
-- (idx_ha_alerts_cluster_opened).
INSERT INTO ha_alerts (cluster_name, kind, level, service, message, metadata, instance_id,
                       resolved_at, last_notified_at)
SELECT $1, $2, $3, $4, $5, $6::jsonb, $7, now(), now()
WHERE NOT EXISTS (
    SELECT 1 FROM ha_alerts
    WHERE cluster_name = $1 AND opened_at > now() - interval '1 day' AND kind = $2
)
RETURNING id;

-- name: alerts_recent
-- $1 cluster_name, $2 limit. The newest alerts (idx_ha_alerts_cluster_opened).
SELECT id, kind, level, service, message, metadata::text AS metadata, opened_at,
       resolved_at, last_notified_at, instance_id
FROM ha_alerts WHERE cluster_name = $1 ORDER BY opened_at DESC, id DESC LIMIT $2;

-- name: handovers_since
-- $1 cluster_name, $2 since (timestamptz). Handovers after it, oldest first
-- (idx_ha_handovers_cluster_at).
SELECT epoch, from_instance_id, to_instance_id, reason, gap_ms, at
FROM ha_handovers WHERE cluster_name = $1 AND at > $2 ORDER BY at LIMIT 20;

-- name: devalert_last_seen
-- Per-device alerts (operations/device_alerts.py). Every enabled equipment (the topic
-- catalogue's filter) and the age, on the database clock, of the arrival of its newest
-- reading (by device time: one backward step of uk_equipamento_timestamp per equipment,
-- whatever the table's size); NULL when it never sent anything. created_at may be NULL
-- on old legacy rows: their device time stands in.
SELECT e.id::text AS id,
       extract(epoch FROM now() - coalesce(newest.created_at, newest.timestamp_dados)::timestamptz)::float8
           AS age_s
FROM equipamentos e
LEFT JOIN LATERAL (
    SELECT d.created_at, d.timestamp_dados
    FROM equipamentos_dados d
    WHERE d.equipamento_id = e.id
    ORDER BY d.timestamp_dados DESC
    LIMIT 1
) AS newest ON true
WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
ORDER BY e.id;

-- name: devalert_open_kinds
-- $1 cluster_name, $2 kind prefix ('equipment_offline:'). The open per-equipment alerts:
-- the state that survives a leader change (the partial index uk_ha_alerts_open_kind
-- holds only open rows).
SELECT kind FROM ha_alerts
WHERE cluster_name = $1 AND resolved_at IS NULL AND starts_with(kind, $2);

-- name: devalert_open
-- $1 cluster_name, $2 kinds (text[]), $3 level, $4 service, $5 messages (text[]),
-- $6 metadata (json text[]), $7 instance_id. Opens one alert per kind, already marked
-- notified (they are sent once, never again on a cooldown); a kind open already is
-- skipped (uk_ha_alerts_open_kind). Returns the rows it opened: only those get sent.
INSERT INTO ha_alerts (cluster_name, kind, level, service, message, metadata, instance_id,
                       last_notified_at)
SELECT $1, o.kind, $3, $4, o.message, o.metadata::jsonb, $7, now()
FROM unnest($2::text[], $5::text[], $6::text[]) AS o(kind, message, metadata)
ON CONFLICT (cluster_name, kind) WHERE resolved_at IS NULL DO NOTHING
RETURNING id, kind;

-- name: devalert_resolve
-- $1 cluster_name, $2 kinds (text[]). Resolves the open alerts of those kinds; returns
-- the rows it resolved (whoever resolves a row sends its "back" notification).
UPDATE ha_alerts SET resolved_at = now()
WHERE cluster_name = $1 AND kind = ANY($2::text[]) AND resolved_at IS NULL
RETURNING id, kind, opened_at;

-- name: devalert_offline_count
-- $1 cluster_name, $2 kind prefix ('equipment_offline:'). Equipment with an open
-- offline alert: the aupus_ha_equipment_offline gauge.
SELECT count(*)::int AS offline FROM ha_alerts
WHERE cluster_name = $1 AND resolved_at IS NULL AND starts_with(kind, $2);

-- name: console_ingest_rate
-- $1 minutes (60). Rows stored per minute of arrival (created_at) over the last $1
-- minutes, every minute listed (0 when none; the last one is the minute in progress):
-- the console's ingest-rate chart. One range scan of the created_at index, grouped in
-- at most $1 buckets.
WITH minutes AS (
    SELECT generate_series(
        date_trunc('minute', now()) - make_interval(mins => $1::int - 1),
        date_trunc('minute', now()),
        interval '1 minute'
    ) AS minute
), counts AS (
    SELECT date_trunc('minute', created_at)::timestamptz AS minute, count(*) AS rows
    FROM equipamentos_dados
    WHERE created_at >= date_trunc('minute', now()) - make_interval(mins => $1::int - 1)
    GROUP BY 1
)
SELECT m.minute, coalesce(c.rows, 0)::bigint AS rows
FROM minutes m LEFT JOIN counts c USING (minute)
ORDER BY m.minute;

-- name: gaps_scan
-- $1 period start, $2 period end (never after now), $3 start of the cadence lookback
-- (the day before $1), all timestamptz; $4 one equipamento id, or NULL for every enabled
-- equipment with a topic; $5 the gap threshold's floor (s); $6 the cadence multiple;
-- $7 the fewest readings in the period the cadence is learned from alone.
-- Per equipment: readings in the period, the first and last of them, the cadence (s:
-- the lower median of the intervals between consecutive readings of the period, or,
-- with fewer than $7 readings there, of the lookback and the period) and the start and
-- end of every interval in the period longer than greatest($6 x cadence, $5)
-- (aupus_ha/operations/gaps.py says why). One range of the natural key per equipment
-- read in key order (an index-only scan once the table is vacuumed): lead() needs no
-- sort, the median sorts intervals (no numeric), the lookback range is read only for
-- the few equipment that need it (a one-time filter), and only the gaps leave the
-- server. A legacy `timestamp` column is compared as wall time of the session's zone
-- (the key stays usable) and returned as timestamptz.
SELECT e.id::text AS equipamento_id, e.nome::text AS nome,
       s.readings, s.first_at, s.last_at,
       extract(epoch FROM s.cadence)::float8 AS cadence_s, s.gap_starts, s.gap_ends
FROM equipamentos e
CROSS JOIN LATERAL (
    WITH seq AS (
        SELECT d.timestamp_dados::timestamptz AS ts,
               lead(d.timestamp_dados::timestamptz) OVER (ORDER BY d.timestamp_dados) AS next_ts
        FROM equipamentos_dados d
        WHERE d.equipamento_id = e.id
          AND d.timestamp_dados >= $1::timestamptz::{ts_type}
          AND d.timestamp_dados < $2::timestamptz::{ts_type}
    ), stats AS (
        SELECT count(*)::int AS readings, min(ts) AS first_at, max(ts) AS last_at,
               percentile_disc(0.5) WITHIN GROUP (ORDER BY next_ts - ts) AS cadence
        FROM seq
    ), lookback AS (
        SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY b.next_ts - b.ts) AS cadence
        FROM (
            SELECT d.timestamp_dados AS ts,
                   lead(d.timestamp_dados) OVER (ORDER BY d.timestamp_dados) AS next_ts
            FROM equipamentos_dados d
            WHERE d.equipamento_id = e.id
              AND d.timestamp_dados >= $3::timestamptz::{ts_type}
              AND d.timestamp_dados < $2::timestamptz::{ts_type}
              AND (SELECT st.readings FROM stats st) < $7::int
        ) AS b
    ), cadence AS (
        SELECT st.readings, st.first_at, st.last_at,
               CASE WHEN st.readings >= $7::int THEN st.cadence
                    ELSE (SELECT lb.cadence FROM lookback lb) END AS cadence
        FROM stats st
    )
    SELECT c.readings, c.first_at, c.last_at, c.cadence, g.gap_starts, g.gap_ends
    FROM cadence c
    CROSS JOIN LATERAL (
        SELECT array_agg(q.ts ORDER BY q.ts) AS gap_starts,
               array_agg(q.next_ts ORDER BY q.ts) AS gap_ends
        FROM seq q
        WHERE q.next_ts - q.ts > greatest(
                  $6::float8 * c.cadence, make_interval(secs => $5::float8))
    ) AS g
) AS s
WHERE ($4::text IS NULL AND e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL
       AND e.deleted_at IS NULL)
   OR e.id::text = $4::text
ORDER BY e.id;

-- name: gaps_power
-- $1 equipamento ids, $2 gap starts, $3 gap ends (parallel arrays, timestamptz), $4
-- readings taken each side, $5 how far from the gap they may be (s). Per gap (1-based
-- position): the mean potencia_ativa_kw of the $4 readings just before its start and
-- the $4 just after its end (NULL powers ignored; no row when none is known). Two short
-- steps of the natural key per gap.
SELECT k.pos, avg(p.kw)::float8 AS mean_kw, count(p.kw)::int AS samples
FROM unnest($1::{id_type}[], $2::timestamptz[], $3::timestamptz[])
     WITH ORDINALITY AS k(equipamento_id, gap_start, gap_end, pos)
CROSS JOIN LATERAL (
    (SELECT d.potencia_ativa_kw::float8 AS kw
     FROM equipamentos_dados d
     WHERE d.equipamento_id = k.equipamento_id
       AND d.timestamp_dados <= k.gap_start::{ts_type}
       AND d.timestamp_dados > (k.gap_start - make_interval(secs => $5::float8))::{ts_type}
     ORDER BY d.timestamp_dados DESC
     LIMIT $4)
    UNION ALL
    (SELECT d.potencia_ativa_kw::float8 AS kw
     FROM equipamentos_dados d
     WHERE d.equipamento_id = k.equipamento_id
       AND d.timestamp_dados >= k.gap_end::{ts_type}
       AND d.timestamp_dados < (k.gap_end + make_interval(secs => $5::float8))::{ts_type}
     ORDER BY d.timestamp_dados
     LIMIT $4)
) AS p
WHERE p.kw IS NOT NULL
GROUP BY k.pos
ORDER BY k.pos;
