"""Health figures count the legacy quality labels as DOMAIN v2 says: `boa`, `bom` and
`GOOD` are good, `ruim` and `BAD` are bad, `parcial` is partial."""

from __future__ import annotations

import asyncpg

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries


async def test_legacy_labels_count_in_the_quality_figures(database_url: str) -> None:
    """One row per label: each lands in the bucket DOMAIN v2 gives it, none is lost."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        labels = ["bom", "boa", "GOOD", "parcial", "ruim", "BAD", "OTHER"]
        await conn.executemany(
            "INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, qualidade) "
            "VALUES ($1, now() - make_interval(secs => $2), '{}', $3)",
            [("eq1", float(n), label) for n, label in enumerate(labels)],
        )
        row = await conn.fetchrow(Queries()["ingestion_window"], 86_400.0, 3_600.0)
    finally:
        await conn.close()
    assert row is not None
    assert (row["total"], row["good"], row["partial"], row["bad"]) == (7, 3, 1, 2)
