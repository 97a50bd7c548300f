"""The spool against its disk and its directory, through real `aupus-ha run` processes.

* Issue 17 defect 8: SPOOL_DIR on a tiny tmpfs that fills up, then is freed. The process
  stays up, acknowledges nothing while full (nothing is stored, the broker keeps the
  messages), and every published reading is stored once after space returns.
* Issue 16, "The spool trusts its directory": a CRC-valid forged record (wrong types,
  unknown version, garbage) in the spool is skipped across a restart while the rest
  replays; an untrusted SPOOL_DIR stops the start with exit 2 and one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import zlib
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    publish,
    seed_equipment,
    stored_keys,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from aupus_ha.pipeline import spool_codec
from aupus_ha.pipeline.readings import Decoded, Reading
from aupus_ha.pipeline.spool import HEADER
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import fill, metric, remount, tmpfs

NOW_ISH = datetime.now(UTC)  # publish() takes (topic, payload, id, time) tuples


async def test_a_full_spool_file_system_stops_acknowledging_and_recovers(
    spawn: ClusterFactory, database_url: str, mosquitto: object, tmp_path: Path
) -> None:
    equipment = await seed_equipment(database_url, 5)
    url = mosquitto.url  # type: ignore[attr-defined]
    with tmpfs(tmp_path / "spoolfs", size="1m", nr_inodes="100000") as fs:
        node = spawn("node-a", SPOOL_DIR=str(fs))
        await wait_single_leader([node])
        await wait_subscribed(node, len(equipment))
        # Nothing spooled yet: the spool holds no page the file system could free later.
        filler = fill(fs / "filler")
        messages = generic_messages(equipment, 40)
        assert await publish(url, messages, rate=400) == len(messages)
        await wait_until(lambda: node.find("spool.write_failed"), 30, "no spool.write_failed")
        failures = await wait_until(
            lambda: _positive(metric(node, "aupus_ha_spool_write_failures")), 10, "no metric"
        )
        # While full: the process is up and nothing of the new messages was stored.
        await asyncio.sleep(2)  # a window in which a wrong acknowledgement would show
        assert node.alive()
        assert await stored_keys(database_url) == []
        assert failures >= 1

        filler.unlink()
        await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages}, timeout=90)
        keys = await stored_keys(database_url)
        assert len(keys) == len(set(keys)) == len(messages)
        assert node.alive()
        node.signal(signal.SIGTERM)
        assert await node.wait_exit(30) == 0


async def test_a_segment_that_cannot_be_created_does_not_stop_the_instance(
    spawn: ClusterFactory, database_url: str, mosquitto: object, tmp_path: Path
) -> None:
    """Defect 8 as it happened: the segment rotation (every 10 s) cannot create a file
    (here no inode is left; EMFILE and a read-only remount take the same path). Before,
    the writer then flushed a closed handle (ValueError) and the process exited. Now it
    keeps writing to the current segment and rotates once files can be created again."""
    equipment = await seed_equipment(database_url, 5)
    url = mosquitto.url  # type: ignore[attr-defined]
    # 4 inodes: the root, the instance directory, its lock file, one segment.
    with tmpfs(tmp_path / "spoolfs", size="4m", nr_inodes="4") as fs:
        node = spawn("node-a", SPOOL_DIR=str(fs))
        await wait_single_leader([node])
        await wait_subscribed(node, len(equipment))
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        first = generic_messages(equipment, 4, start=start)
        assert await publish(url, first, rate=200) == len(first)
        await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in first}, timeout=30)
        await wait_until(
            lambda: node.find("spool.segment_create_failed"), 40, "no rotation was attempted"
        )
        assert node.alive()
        later = generic_messages(equipment, 4, start=start + timedelta(minutes=5))
        assert await publish(url, later, rate=200) == len(later)
        await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in later}, timeout=30)

        await asyncio.to_thread(remount, fs, nr_inodes="64")
        await wait_until(lambda: node.find("spool.segment_created"), 40, "never rotated")
        last = generic_messages(equipment, 4, start=start + timedelta(minutes=10))
        assert await publish(url, last, rate=200) == len(last)
        await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in last}, timeout=30)
        keys = await stored_keys(database_url)
        assert len(keys) == len(set(keys)) == len(first) + len(later) + len(last)
        assert node.alive()


async def wait_subscribed(node: InstanceProcess, topics: int) -> None:
    """Until the instance reports `topics` subscribed topics (its intake is ready)."""
    await wait_until(
        lambda: _is(metric(node, "aupus_ha_mqtt_subscribed_topics"), topics),
        30,
        "topics not subscribed",
    )


async def _is(value: Awaitable[float], expected: float) -> bool:
    return (await value) == expected


async def _positive(value: Awaitable[float]) -> float | None:
    got = await value
    return got if got > 0 else None


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def reading_body(equipamento_id: str, at: datetime) -> bytes:
    dados = orjson.dumps({"timestamp": at.isoformat(), "power": 7})
    return spool_codec.encode(Decoded(readings=[Reading(equipamento_id, at, dados)]))


def forged_records(equipamento_id: str, at: datetime) -> list[bytes]:
    """CRC-valid records that an attacker with write access (or a damaged disk) leaves."""
    wrong_type = orjson.loads(reading_body(equipamento_id, at))
    wrong_type["r"][0][2] = 5  # `dados` not a string: AttributeError before the fix
    naive = orjson.loads(reading_body(equipamento_id, at))
    naive["r"][0][1] = at.replace(tzinfo=None).isoformat()
    return [
        orjson.dumps(wrong_type),
        orjson.dumps({"v": 99, "r": [], "j": []}),
        b"\x00\xffgarbage behind a valid checksum",
        orjson.dumps(naive),
    ]


async def test_a_forged_record_is_skipped_and_the_rest_replays_after_a_restart(
    spawn: ClusterFactory, database_url: str, tmp_path: Path
) -> None:
    (eq, _), *_ = await seed_equipment(database_url, 1)
    node = spawn("node-a")
    await wait_single_leader([node])
    node.signal(signal.SIGTERM)
    assert await node.wait_exit(30) == 0

    spool_dir = next((tmp_path / "spool").iterdir())  # <cluster>-node-a
    existing = [int(p.stem) for p in spool_dir.glob("*.seg")]
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    bodies = [
        reading_body(eq, at),
        *forged_records(eq, at + timedelta(seconds=1)),
        reading_body(eq, at + timedelta(seconds=2)),
    ]
    segment = spool_dir / f"{max(existing, default=0) + 1:016d}.seg"
    segment.write_bytes(b"".join(frame(b) for b in bodies))
    os.chmod(segment, 0o600)

    node.start()
    await wait_all_stored(database_url, {(eq, at), (eq, at + timedelta(seconds=2))}, timeout=30)
    await wait_until(
        lambda: len(node.find("spool.unreadable_record")) == 4, 10, "bad records not logged"
    )
    assert node.alive()
    assert await metric(node, "aupus_ha_spool_bad_records") == 4
    assert len(await stored_keys(database_url)) == 2


async def test_an_untrusted_spool_dir_stops_the_start_with_one_line(
    spawn: ClusterFactory, tmp_path: Path
) -> None:
    open_dir = tmp_path / "open-spool"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    node = spawn("node-a", SPOOL_DIR=str(open_dir))
    assert await node.wait_exit(30) == 2
    lines = [ln for ln in node.log_path.read_text().splitlines() if ln.startswith("aupus-ha:")]
    assert lines == [
        f"aupus-ha: configuration error: SPOOL_DIR={str(open_dir)!r} is refused: "
        "writable by group or others (mode 777; chmod go-w)"
    ]


async def test_an_instance_directory_owned_by_another_user_is_refused(
    spawn: ClusterFactory, tmp_path: Path, base_env: dict[str, str]
) -> None:
    spool_dir = tmp_path / "spool"
    theirs = spool_dir / f"{base_env['CLUSTER_NAME']}-node-a"
    theirs.mkdir(parents=True, mode=0o700)
    os.chown(theirs, 4242, 4242)
    node = spawn("node-a", SPOOL_DIR=str(spool_dir))
    assert await node.wait_exit(60) == 2
    assert f"aupus-ha: SPOOL_DIR={spool_dir} is refused: {theirs} is owned by uid 4242" in (
        node.log_path.read_text()
    )


async def test_a_flood_of_bad_messages_keeps_a_bounded_prefix_at_a_bounded_rate(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """Issue 16, "Rejects can fill the database": 60 distinct 64 KiB bad messages on one
    topic keep REJECT_BURST rows of REJECT_PAYLOAD_PREFIX_BYTES each, with the whole
    message's hash and size; the rest are counted, not stored; readings keep flowing."""
    (eq, topic), *_ = await seed_equipment(database_url, 1)
    url = mosquitto.url  # type: ignore[attr-defined]
    node = spawn(
        "node-a",
        REJECT_BURST="5",
        REJECT_RATE_PER_MIN="0.01",
        REJECT_PAYLOAD_PREFIX_BYTES="1024",
    )
    await wait_single_leader([node])
    await wait_subscribed(node, 1)
    bad = [b"{not json %d " % n + b"x" * 65_536 for n in range(60)]
    flood = [(topic, payload, eq, NOW_ISH) for payload in bad]
    assert await publish(url, flood, rate=500) == len(flood)
    readings = generic_messages([(eq, topic)], 5)
    assert await publish(url, readings, rate=100) == len(readings)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in readings}, timeout=30)
    await wait_until(
        lambda: _is(metric(node, "aupus_ha_rejects_rate_limited"), 55), 30, "not counted"
    )
    rows = await fetch(
        database_url,
        "SELECT octet_length(payload) AS kept, payload_bytes, payload_sha256 FROM ingest_rejects",
    )
    assert len(rows) == 5
    hashes = {hashlib.sha256(p).hexdigest() for p in bad}
    assert all(r["kept"] == 1024 and r["payload_bytes"] == len(bad[0]) for r in rows)
    assert {r["payload_sha256"] for r in rows} <= hashes
    assert len(node.find("rejects.rate_limited")) == 1
