-- 007: equipment categories (DOMAIN v2 "Which family": the type's category `Gateway`
-- routes the A-966 gateway family). The platform's database already has them
-- (`tipos_equipamentos.categoria_id` → `categorias_equipamentos (id, nome)`, char(26)
-- ids) and keeps its own types; a fresh database gets the same shape with text ids, so
-- the one `enabled_equipment` query serves both.
-- Additive and idempotent: a table and a nullable column created only when missing, no
-- constraint that an existing row could fail; an instance of the previous release reads
-- neither and keeps working (rolling upgrade).
CREATE TABLE IF NOT EXISTS categorias_equipamentos (
    id   text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    nome text NOT NULL
);
ALTER TABLE tipos_equipamentos ADD COLUMN IF NOT EXISTS categoria_id text;
