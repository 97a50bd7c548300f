"""Rolling upgrade, end to end: the previous commit on main and this one side by side.

The project's rule: an instance of the previous version and one of this version run
together on one database and one broker (this version's migrations are additive, the
old spool replays), and a switch-over between them loses and duplicates nothing. The
previous version is checked out of this repository with `git worktree` (ref from
AUPUS_PREVIOUS_REF, default a162a20) and run by the same interpreter with PYTHONPATH on
that tree. Four switch-overs, while readings flow:

1. old leader -> new standby by kill -9 (the new one migrated the schema on joining);
2. new leader -> old standby by SIGTERM (the old one reads the schema the new one made);
3. the old leader, acknowledging into its spool while the database is down, is killed
   with -9 and this version starts on its spool directory under its INSTANCE_ID;
4. and back (a rollback): the same with this version's spool replayed by the old one.

Every published reading must be stored exactly once, and no two instances ever answer
200 on /health/leader at once. Slow (a few minutes): `pytest -m slow
tests/acceptance/test_rolling_upgrade.py` (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    fetch,
    generic_messages,
    publish,
    stored_keys,
    wait_single_leader,
    wait_until,
)
from tests.helpers import metric, standby_ready
from tests.legacy_schema import (
    LEGACY_TIMEZONE,
    SchemaKind,
    create_legacy_tables,
    cuid,
    register_equipment,
    set_database_timezone,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_REF = os.environ.get("AUPUS_PREVIOUS_REF", "a162a20")
EQUIPMENT = 10
Message = tuple[str, bytes, str, datetime]
Key = tuple[str, datetime]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )


def _modules(tree: Path) -> set[str]:
    """Dotted names of the aupus_ha modules and packages in a source tree (a module of
    one tree may be a package of the other: aupus_ha.decoding)."""
    names = set()
    for path in (tree / "aupus_ha").rglob("*.py"):
        parts = path.relative_to(tree).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The previous version's source, a detached worktree removed afterwards."""
    if _git("rev-parse", "--verify", "--quiet", f"{PREVIOUS_REF}^{{commit}}").returncode:
        pytest.skip(
            f"AUPUS_PREVIOUS_REF={PREVIOUS_REF} is not a commit of this repository "
            "(a shallow clone? fetch it, or set AUPUS_PREVIOUS_REF)"
        )
    where = tmp_path_factory.mktemp("previous") / "tree"
    added = _git("worktree", "add", "--detach", str(where), PREVIOUS_REF)
    assert added.returncode == 0, added.stderr
    try:
        yield where
    finally:
        _git("worktree", "remove", "--force", str(where))
        _git("worktree", "prune")


@dataclass
class Cluster:
    """Every process of the scenario, old and new, and what the probes saw."""

    base_env: dict[str, str]
    root: Path
    old_tree: Path
    nodes: list[InstanceProcess] = field(default_factory=list)
    most_leaders: int = 0
    samples: int = 0
    double_leaders: list[list[str]] = field(default_factory=list)
    # Log file -> when the database went away under that process (its errors from
    # then on are the outage's).
    outage_of: dict[Path, str] = field(default_factory=dict)

    def old_env(self) -> dict[str, str]:
        return {**self.base_env, "PYTHONPATH": str(self.old_tree)}

    def is_old(self, node: InstanceProcess) -> bool:
        return node.env.get("PYTHONPATH") == str(self.old_tree)

    def new_env(self) -> dict[str, str]:
        return {**self.base_env, "PYTHONPATH": str(REPO)}

    def start(self, name: str, *, old: bool) -> InstanceProcess:
        # A log directory per process: a name restarted under the other version keeps
        # its spool (SPOOL_DIR is shared) but gets a log of its own.
        log_dir = self.root / f"{name}-{'old' if old else 'new'}-{len(self.nodes)}"
        log_dir.mkdir()
        env = self.old_env() if old else self.new_env()
        node = InstanceProcess(name, env, log_dir).start()
        self.nodes.append(node)
        return node

    async def watch_leaders(self) -> None:
        """Samples /health/leader of every live process until cancelled."""
        while True:
            live = [n for n in self.nodes if n.alive()]
            found = await asyncio.gather(*(n.is_leader() for n in live))
            leading = [n.name for n, yes in zip(live, found, strict=True) if yes]
            self.most_leaders = max(self.most_leaders, len(leading))
            self.samples += 1
            if len(leading) > 1:
                self.double_leaders.append(leading)
            await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop_now()


class Stream:
    """Readings published at a steady rate until `finish`; knows what was acknowledged."""

    def __init__(self, url: str, messages: list[Message], rate: float) -> None:
        self.messages = messages
        self.sent = 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            publish(url, messages, rate=rate, on_sent=self._count, stop=self._stop)
        )

    def _count(self, sent: int) -> None:
        self.sent = sent

    async def finish(self) -> list[Message]:
        self._stop.set()
        sent = await asyncio.wait_for(self._task, 60)
        return self.messages[:sent]


def natural_key(equipment_id: str, ts: datetime, legacy: bool) -> Key:
    """A reading's key as either schema stores it: the legacy one pads the char(26) id
    and keeps UTC wall time to the second."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    if legacy:
        ts = ts.replace(microsecond=0)  # the 7 ms of generic_messages round down
    return equipment_id.strip(), ts


def keys_of(messages: list[Message], legacy: bool) -> set[Key]:
    return {natural_key(e, ts, legacy) for _, _, e, ts in messages}


async def stored(dsn: str, legacy: bool) -> list[Key]:
    return [natural_key(e, ts, legacy) for e, ts in await stored_keys(dsn)]


async def wait_all_stored(dsn: str, expected: set[Key], legacy: bool, timeout: float) -> None:
    async def complete() -> bool:
        return expected <= set(await stored(dsn, legacy))

    try:
        await wait_until(complete, timeout, "not every reading was stored", interval=0.2)
    except AssertionError:
        missing = expected - set(await stored(dsn, legacy))
        raise AssertionError(
            f"{len(missing)} of {len(expected)} readings missing, e.g. {sorted(missing)[:3]}"
        ) from None


def imported(node: InstanceProcess) -> set[str]:
    """Modules the process imported (PYTHONPROFILEIMPORTTIME lines of its log)."""
    lines = node.log_path.read_text(errors="replace").splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def assert_runs_tree(node: InstanceProcess, own: set[str], other: set[str]) -> None:
    """The process loaded the modules only its tree has and none only the other has."""
    modules = imported(node)
    assert modules, f"{node.name}: no import trace in its log"
    if own:
        assert modules & own, f"{node.name} imported none of {sorted(own)[:5]}"
    assert not modules & other, f"{node.name} imported {sorted(modules & other)[:5]}"


def migration_versions(tree: Path) -> list[str]:
    """The migration versions a tree ships (sql/migrations/NNN_name.sql)."""
    return sorted(p.name.partition("_")[0] for p in (tree / "sql" / "migrations").glob("*.sql"))


async def applied_versions(dsn: str) -> list[str]:
    rows = await fetch(dsn, "SELECT version FROM schema_migrations ORDER BY version")
    return [str(r["version"]) for r in rows]


def errors(node: InstanceProcess, before: str) -> list[str]:
    """Events logged at error level (or above) before the ISO time `before`."""
    return [
        str(e.get("event"))
        for e in node.events()
        if e.get("level") in {"error", "critical"} and str(e.get("timestamp", "")) < before
    ]


async def open_device_alerts(dsn: str) -> int:
    rows = await fetch(
        dsn,
        "SELECT count(*) AS n FROM ha_alerts "
        "WHERE kind LIKE 'equipment_offline:%' AND resolved_at IS NULL",
    )
    return int(rows[0]["n"])


async def count_rows(dsn: str) -> int:
    rows = await fetch(dsn, "SELECT count(*) AS n FROM equipamentos_dados")
    return int(rows[0]["n"])


async def wait_more_rows(dsn: str, more: int, why: str) -> None:
    """Waits until `more` rows beyond the present count are stored (someone writes)."""
    target = await count_rows(dsn) + more
    await wait_until(lambda: _at_least(dsn, target), 30, why, interval=0.1)


async def _at_least(dsn: str, target: int) -> bool:
    return await count_rows(dsn) >= target


async def takeover_seconds(node: InstanceProcess, since: float) -> float:
    await wait_until(node.is_leader, 30, f"{node.name} never led: {node.tail()}", interval=0.01)
    return time.monotonic() - since


async def leader_epoch(node: InstanceProcess) -> int:
    _, body = await node.get("/health/leader")
    assert body is not None
    return int(body["epoch"])


async def seed_old_schema(env: dict[str, str], dsn: str, kind: SchemaKind) -> list[tuple[str, str]]:
    """The previous version migrates the database (`aupus-ha migrate`): empty, or the
    platform's legacy tables; then the equipment rows go in directly, so the schema is
    exactly what the old version made of it."""
    if kind == "legacy":
        conn = await asyncpg.connect(dsn)
        try:
            await set_database_timezone(conn, LEGACY_TIMEZONE)
            await create_legacy_tables(conn)
        finally:
            await conn.close()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aupus_ha", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    rows = [(cuid(f"rolling-{i}"), f"aupus/rolling/{i}") for i in range(EQUIPMENT)]
    conn = await asyncpg.connect(dsn)
    try:
        for equipment_id, topic in rows:
            await register_equipment(conn, equipment_id, topic, None)
    finally:
        await conn.close()
    return rows


async def crash_with_spool(
    cluster: Cluster,
    postgres: EmbeddedPostgres,
    node: InstanceProcess,
    batch: list[Message],
    url: str,
) -> tuple[InstanceProcess, int]:
    """With the database stopped, `node` acknowledges `batch` into its spool and is
    killed (-9); the other version starts on that spool under the same INSTANCE_ID and
    leads. Returns it and how many records it replayed from the spool."""
    spooled_before = await metric(node, "aupus_ha_spool_records")
    cluster.outage_of[node.log_path] = datetime.now(UTC).isoformat()
    await asyncio.to_thread(postgres.stop)
    assert await publish(url, batch, rate=300) == len(batch)

    async def all_spooled() -> bool:
        return await metric(node, "aupus_ha_spool_records") >= spooled_before + len(batch)

    await wait_until(all_spooled, 60, f"{node.name} did not spool: {node.tail()}")
    node.stop_now()
    await asyncio.to_thread(postgres.start)
    successor = cluster.start(node.name, old=not cluster.is_old(node))
    await wait_single_leader([successor], timeout=60)
    caught_up = await wait_until(
        lambda: successor.find("spool.replay_caught_up"), 30, f"no replay: {successor.tail()}"
    )
    return successor, int(caught_up[0]["replayed"])


@pytest.mark.parametrize("kind", ["fresh", "legacy"])
async def test_rolling_upgrade_loses_and_duplicates_nothing(
    kind: SchemaKind,
    previous_tree: Path,
    own_postgres: EmbeddedPostgres,
    mosquitto: object,
    tmp_path: Path,
) -> None:
    dsn = own_postgres.dsn()
    legacy = kind == "legacy"
    url: str = mosquitto.url  # type: ignore[attr-defined]
    base_env = {
        "DATABASE_URL": dsn,
        "MQTT_URL": url,
        "CLUSTER_NAME": f"rolling-{kind}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONPROFILEIMPORTTIME": "1",  # the import trace tells which tree a process runs
        # The new version's per-device alerts open rows in ha_alerts between the streams:
        # the old version must read (list, lead beside) them.
        "ALERT_INTERVAL_S": "1",
        "EQUIPMENT_OFFLINE_AFTER_S": "2",
        **FAST_TIMINGS,
    }
    cluster = Cluster(base_env, tmp_path, previous_tree)
    old_only = _modules(previous_tree) - _modules(REPO)
    new_only = _modules(REPO) - _modules(previous_tree)
    equipment = await seed_old_schema(cluster.old_env(), dsn, kind)
    assert await applied_versions(dsn) == migration_versions(previous_tree)
    # Disjoint minutes of data, recent enough for the legacy time check (the median of
    # created_at - timestamp_dados must stay within an hour).
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
    batches = [
        generic_messages(equipment, 300, start=start + timedelta(minutes=10 * n)) for n in range(4)
    ]
    expected: set[Key] = set()
    watcher = asyncio.create_task(cluster.watch_leaders())
    try:
        # 1. The old version leads; the new one joins (migrating) as standby; kill -9 of
        #    the old leader while readings flow.
        node_a = cluster.start("node-a", old=True)
        await wait_single_leader([node_a], timeout=60)
        assert_runs_tree(node_a, old_only, new_only)
        stream = Stream(url, batches[0], rate=150)
        await wait_more_rows(dsn, 100, "the old leader does not write")
        node_b = cluster.start("node-b", old=False)
        await wait_until(lambda: standby_ready(node_b), 60, f"node-b: {node_b.tail()}")
        assert_runs_tree(node_b, new_only, old_only)
        assert await applied_versions(dsn) == migration_versions(REPO)
        await wait_more_rows(dsn, 100, "the old leader stopped writing on the new schema")
        killed_at = time.monotonic()
        node_a.signal(signal.SIGKILL)
        old_to_new = await takeover_seconds(node_b, killed_at)
        await wait_more_rows(dsn, 100, "the new leader does not write")
        expected |= keys_of(await stream.finish(), legacy)
        await wait_all_stored(dsn, expected, legacy, timeout=60)

        # 2. The fleet falls silent: the new leader opens per-device alert rows. An old
        #    instance joins as standby and lists them; SIGTERM of the new leader.
        await wait_until(
            lambda: open_device_alerts(dsn), 30, f"no equipment_offline rows: {node_b.tail()}"
        )
        node_c = cluster.start("node-c", old=True)
        await wait_until(lambda: standby_ready(node_c), 60, f"node-c: {node_c.tail()}")
        assert_runs_tree(node_c, old_only, new_only)
        status, listed = await node_c.get("/health/alerts", timeout=5)
        assert status == 200 and listed is not None, (status, listed)
        kinds = {a["kind"] for a in listed["alerts"]}
        assert any(k.startswith("equipment_offline:") for k in kinds), kinds
        stream = Stream(url, batches[1], rate=150)
        await wait_more_rows(dsn, 100, "the new leader does not write")
        stopped_at = time.monotonic()
        node_b.signal(signal.SIGTERM)
        new_to_old = await takeover_seconds(node_c, stopped_at)
        assert await node_b.wait_exit(30) == 0, node_b.tail()
        epoch_c = await leader_epoch(node_c)
        await wait_more_rows(dsn, 100, "the old leader does not write on the new schema")
        expected |= keys_of(await stream.finish(), legacy)
        await wait_all_stored(dsn, expected, legacy, timeout=60)
        written_by_old = await fetch(
            dsn, "SELECT count(*) AS n FROM equipamentos_dados WHERE ha_epoch = $1", epoch_c
        )
        assert written_by_old[0]["n"] > 0

        # 3. The database goes away; the old instance acknowledges into its spool and
        #    dies by kill -9; this version starts on that spool under the same id.
        batch = batches[2][:600]
        node_c2, upgraded = await crash_with_spool(cluster, own_postgres, node_c, batch, url)
        assert_runs_tree(node_c2, new_only, old_only)
        expected |= keys_of(batch, legacy)
        await wait_all_stored(dsn, expected, legacy, timeout=90)
        from_broker = await metric(node_c2, "aupus_ha_messages_received")

        # 4. And back (a rollback): the old version replays this version's spool.
        batch = batches[3][:600]
        node_c3, rolled_back = await crash_with_spool(cluster, own_postgres, node_c2, batch, url)
        assert_runs_tree(node_c3, old_only, new_only)
        expected |= keys_of(batch, legacy)
        await wait_all_stored(dsn, expected, legacy, timeout=90)
        for node, replayed in ((node_c2, upgraded), (node_c3, rolled_back)):
            assert node.find("spool.recovering"), f"no spool replay: {node.tail()}"
            assert replayed >= len(batch), (node.log_path, replayed)
        assert not watcher.done(), "the leader sampler stopped"
        errors_logged = {
            node.log_path.parent.name: errors(node, cluster.outage_of.get(node.log_path, "9"))
            for node in cluster.nodes
        }
    finally:
        watcher.cancel()
        cluster.stop_all()
        if not own_postgres.is_running:
            await asyncio.to_thread(own_postgres.start)

    keys = await stored(dsn, legacy)
    duplicated = len(keys) - len(set(keys))
    lost = expected - set(keys)
    print(
        f"rolling upgrade ({kind}): {len(expected)} published, {len(keys)} stored, "
        f"{len(lost)} lost, "
        f"{duplicated} duplicated, {len(set(keys) - expected)} unexpected; "
        f"old->new kill -9 {old_to_new:.2f}s, new->old SIGTERM {new_to_old:.2f}s; "
        f"old spool replayed by the new version: {upgraded} records ({from_broker:.0f} "
        f"from the broker), new spool by the old version: {rolled_back}; "
        f"most leaders at once {cluster.most_leaders} in {cluster.samples} samples"
    )
    assert not any(errors_logged.values()), errors_logged
    assert not lost and duplicated == 0 and set(keys) == expected
    assert cluster.samples > 100 and cluster.most_leaders == 1, (
        f"two leaders at once: {cluster.double_leaders[:3]}"
    )
    assert old_to_new < 5 and new_to_old < 5, (old_to_new, new_to_old)
