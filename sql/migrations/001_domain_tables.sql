-- Domain tables of the energy platform. Created only when missing: on a database that
-- already holds the legacy tables (Prisma, char(26) cuids, timestamp(0) in Brasília
-- time), their types are kept and only what aupus-ha needs is added.

CREATE TABLE IF NOT EXISTS tipos_equipamentos (
    id          text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    codigo      text NOT NULL UNIQUE,
    nome        text NOT NULL,
    mqtt_schema jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tipos_equipamentos ADD COLUMN IF NOT EXISTS mqtt_schema jsonb;

CREATE TABLE IF NOT EXISTS equipamentos (
    id                  text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    nome                text NOT NULL,
    topico_mqtt         text,
    mqtt_habilitado     boolean NOT NULL DEFAULT false,
    tipo_equipamento_id text,
    diagrama_id         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
ALTER TABLE equipamentos ADD COLUMN IF NOT EXISTS topico_mqtt text;
ALTER TABLE equipamentos ADD COLUMN IF NOT EXISTS mqtt_habilitado boolean NOT NULL DEFAULT false;
ALTER TABLE equipamentos ADD COLUMN IF NOT EXISTS deleted_at timestamptz;
ALTER TABLE equipamentos ADD COLUMN IF NOT EXISTS tipo_equipamento_id text;

-- The topic catalogue is re-read every few seconds by every instance.
CREATE INDEX IF NOT EXISTS idx_equipamentos_mqtt_topics
    ON equipamentos (topico_mqtt) WHERE mqtt_habilitado AND deleted_at IS NULL;

-- No foreign key to equipamentos on purpose: a fresh schema should not pay an index
-- probe per inserted row, and a legacy one keeps whatever it had (the flush isolates
-- rows that a legacy constraint refuses; see docs/architecture.md).
CREATE TABLE IF NOT EXISTS equipamentos_dados (
    id                text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    equipamento_id    text NOT NULL,
    timestamp_dados   timestamptz NOT NULL,
    dados             jsonb NOT NULL,
    fonte             text NOT NULL DEFAULT 'MQTT',
    qualidade         text,
    energia_kwh       double precision,
    potencia_ativa_kw double precision,
    num_leituras      integer,
    timestamp_fim     timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uk_equipamento_timestamp UNIQUE (equipamento_id, timestamp_dados)
);
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS fonte text DEFAULT 'MQTT';
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS qualidade text;
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS energia_kwh double precision;
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS potencia_ativa_kw double precision;
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS num_leituras integer;
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS timestamp_fim timestamptz;
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now();
-- Which leadership epoch wrote the row: proves that a fenced leader committed nothing.
ALTER TABLE equipamentos_dados ADD COLUMN IF NOT EXISTS ha_epoch bigint;

DO $$
BEGIN
    -- A legacy id column without a default (Prisma generated cuids client-side)
    -- gets one, so rows written by aupus-ha need no id from the application.
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'equipamentos_dados'
          AND column_name = 'id' AND column_default IS NULL
    ) THEN
        EXECUTE 'ALTER TABLE equipamentos_dados ALTER COLUMN id SET DEFAULT '
             || 'substr(replace(gen_random_uuid()::text, ''-'', ''''), 1, 26)';
    END IF;

    -- The natural key. The legacy table already has it (its violations were the P2002
    -- errors); a table without any unique index on the pair gets the constraint.
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relname = 'equipamentos_dados'
          AND c.relnamespace = current_schema()::regnamespace
          AND i.indisunique
          AND (SELECT array_agg(a.attname::text ORDER BY k.ord)
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum)
              = ARRAY['equipamento_id', 'timestamp_dados']
    ) THEN
        ALTER TABLE equipamentos_dados
            ADD CONSTRAINT uk_equipamento_timestamp UNIQUE (equipamento_id, timestamp_dados);
    END IF;
END
$$;

-- Health queries ask for the newest rows; without this they scanned the whole table
-- (6-21 s on the legacy database). A legacy database that already has an index led by
-- created_at (under any name) keeps it: building a second one inside this transaction
-- would block the table's writers for the whole build. (On a big legacy table without
-- one, create it CONCURRENTLY by hand before the first start: see the runbook.)
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE c.relname = 'equipamentos_dados'
          AND c.relnamespace = current_schema()::regnamespace
          AND a.attname = 'created_at'
    ) THEN
        CREATE INDEX idx_equipamentos_dados_created_at ON equipamentos_dados (created_at DESC);
    END IF;
END
$$;
