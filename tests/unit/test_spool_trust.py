"""The spool trusts nothing it finds on disk: modes, owners, symlinks, forged records.

Issue 16, "The spool trusts its directory": created 0700 (segments 0600), a directory
another user owns or others may write is refused, symlinked segments are neither read
nor appended to, and no single record — forged with the wrong types, of an unknown
version, or garbage behind a valid checksum — can stop the replay. The spool written by
the previous version still replays (rolling upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha.config import ConfigError, load_settings
from aupus_ha.lab.localcluster import wait_until
from aupus_ha.pipeline import spool_codec
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.intake import DurableIntake
from aupus_ha.pipeline.readings import Decoded, Reading, Reject
from aupus_ha.pipeline.spool import HEADER, Spool, SpoolUntrusted

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OTHER_UID = 4242

# A record body exactly as the previous version (commit 8769d26) wrote it: two readings
# (a plain one and a per-minute sample) and one reject with five fields.
PREVIOUS_VERSION_BODY = (
    b'{"v":1,"r":[["eq-1","2026-03-01T12:00:00+00:00",'
    b'"{\\"power\\":1000,\\"timestamp\\":\\"2026-03-01T12:00:00Z\\"}","bom","MQTT",1.5,'
    b'null,3,null,true,null],["inv-1","2026-03-01T12:00:00+00:00",'
    b'"{\\"power\\":{\\"active_total\\":5}}","bom","MQTT",null,null,null,'
    b'"2026-03-01T12:01:00+00:00",true,"2026-03-01T12:00:07+00:00"]],'
    b'"j":[["medidores/x","bm90IGpzb24=","invalid_json: x","2026-03-01T12:00:00+00:00",'
    b'"7ccfa1fbf3940e6f0c0375d87c0f9235a50514e14cb427bdfaf5077987b26ccf"]]}'
)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def good(n: int) -> bytes:
    reading = Reading("eq-1", T0.replace(second=n), b'{"n":%d}' % n)
    return spool_codec.encode(Decoded(readings=[reading]))


def with_reading_field(index: int, value: object) -> bytes:
    fields = orjson.loads(good(0))
    fields["r"][0][index] = value
    return orjson.dumps(fields)


FORGED = {
    "dados not a string": with_reading_field(2, 5),
    "dados not a JSON object": with_reading_field(2, "[1, 2]"),
    "timestamp without zone": with_reading_field(1, "2026-03-01T12:00:00"),
    "timestamp not a string": with_reading_field(1, 1_700_000_000),
    "id not a string": with_reading_field(0, ["eq"]),
    "empty id": with_reading_field(0, ""),
    "unknown quality": with_reading_field(3, "excelente"),
    "energy not finite": with_reading_field(5, "1e999"),
    "energy a boolean": with_reading_field(5, True),
    "count negative": with_reading_field(7, -1),
    "matchable not a boolean": with_reading_field(9, "yes"),
    "reading too short": orjson.dumps({"v": 1, "r": [["eq-1"]], "j": []}),
    "readings not a list": orjson.dumps({"v": 1, "r": {"a": 1}, "j": []}),
    "reject payload not base64": orjson.dumps(
        {"v": 1, "r": [], "j": [["t", "%%%", "r", "2026-03-01T12:00:00+00:00", "0" * 64]]}
    ),
    "reject hash not hex": orjson.dumps(
        {"v": 1, "r": [], "j": [["t", "", "r", "2026-03-01T12:00:00+00:00", "zz"]]}
    ),
    "unknown version": orjson.dumps({"v": 2, "r": [], "j": []}),
    "not an object": b"[1, 2, 3]",
    "garbage": b"\xff\x00\x13garbage that passed its checksum",
    "empty": b"",
    "number beyond a double": good(0).replace(b'"MQTT",null', b'"MQTT",1e999'),
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_forged_record_is_refused_with_one_value_error(name: str) -> None:
    """Whatever is wrong with a body, decode raises ValueError, nothing else."""
    with pytest.raises(ValueError):
        spool_codec.decode(FORGED[name])


def test_the_previous_versions_records_still_decode() -> None:
    """Rolling upgrade: a spool written by the previous commit replays unchanged."""
    decoded = spool_codec.decode(PREVIOUS_VERSION_BODY)
    assert [r.equipamento_id for r in decoded.readings] == ["eq-1", "inv-1"]
    assert decoded.readings[1].sample_at == T0.replace(second=7)
    (reject,) = decoded.rejects
    assert reject.payload == b"not json" and reject.payload_bytes is None


def test_a_bounded_reject_round_trips_with_its_size() -> None:
    reject = Reject("t", b"abc", "r", T0, "a" * 64, payload_bytes=300_000)
    (back,) = spool_codec.decode(spool_codec.encode(Decoded(rejects=[reject]))).rejects
    assert back == reject


async def test_one_bad_record_of_each_kind_is_skipped_and_the_rest_replays(
    tmp_path: Path,
) -> None:
    """Before: a CRC-valid record with `dados` not a string raised AttributeError in the
    replay task (the instance exited at every start)."""
    directory = tmp_path / "spool" / "c-i"
    directory.mkdir(parents=True, mode=0o700)
    bodies = [good(10), *(FORGED[name] for name in sorted(FORGED)), good(11)]
    bodies.insert(3, PREVIOUS_VERSION_BODY)
    (directory / "0000000000000001.seg").write_bytes(b"".join(frame(b) for b in bodies))
    spool = Spool(directory, max_bytes=1 << 30)
    buffer = PendingBuffer(max_items=1000, on_settled=spool.settle)
    intake = DurableIntake(buffer, spool)
    intake.open(None)
    replay = asyncio.create_task(intake.run_replay())
    try:
        await asyncio.wait_for(_until(lambda: not intake.backlog), 10)
        assert not replay.done()
    finally:
        replay.cancel()
        await asyncio.gather(replay, return_exceptions=True)
        await spool.close()
    readings, rejects = buffer.oldest(100)
    assert {r.equipamento_id for r in readings} == {"eq-1", "inv-1"}
    assert len(readings) == 4 and len(rejects) == 1  # good(10), good(11), the old record
    assert spool.stats.bad_records == len(FORGED)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling a plain attribute, with a deadline
        await asyncio.sleep(0.01)


# --- the directory ------------------------------------------------------------------------


async def test_a_new_spool_is_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool" / "c-i", max_bytes=1 << 20)
    spool.open(lambda record, item: None)
    try:
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "spool" / "c-i").stat().st_mode) == 0o700
        entries = list((tmp_path / "spool" / "c-i").iterdir())
        assert {e.suffix for e in entries} == {".seg", ".lock"}
        for entry in entries:
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name
    finally:
        await spool.close()


async def test_a_directory_left_by_the_previous_version_is_made_private(tmp_path: Path) -> None:
    """The previous version created the directory 0755: it is tightened, and replays."""
    directory = tmp_path / "spool" / "c-i"
    directory.mkdir(parents=True, mode=0o755)
    directory.chmod(0o755)
    (directory / "spool.lock").write_bytes(b"")
    (directory / "0000000000000001.seg").write_bytes(frame(PREVIOUS_VERSION_BODY))
    spool = Spool(directory, max_bytes=1 << 20)
    spool.open(lambda record, item: None)
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        records, damaged = await spool.read_backlog()
        assert [r.body for r in records] == [PREVIOUS_VERSION_BODY] and not damaged
    finally:
        await spool.close()


@pytest.mark.parametrize(
    ("where", "change", "why"),
    [
        ("spool", lambda p: os.chown(p, OTHER_UID, -1), "owned by uid 4242"),
        ("spool", lambda p: p.chmod(0o777), "writable by group or others"),
        ("spool", lambda p: p.chmod(0o770), "writable by group or others"),
        ("spool/c-i", lambda p: os.chown(p, OTHER_UID, -1), "owned by uid 4242"),
        ("spool/c-i", lambda p: p.chmod(0o702), "writable by group or others"),
    ],
)
def test_a_directory_others_can_write_is_refused(
    tmp_path: Path, where: str, change: object, why: str
) -> None:
    (tmp_path / "spool" / "c-i").mkdir(parents=True, mode=0o700)
    change(tmp_path / where)  # type: ignore[operator]
    with pytest.raises(SpoolUntrusted, match=f"SPOOL_DIR={tmp_path / 'spool'} is refused.*{why}"):
        Spool(tmp_path / "spool" / "c-i", max_bytes=1 << 20).open(lambda r, i: None)


def test_a_symlinked_instance_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "spool").mkdir(mode=0o700)
    (tmp_path / "spool" / "c-i").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SpoolUntrusted, match="is a symlink"):
        Spool(tmp_path / "spool" / "c-i", max_bytes=1 << 20).open(lambda r, i: None)


def test_spool_dir_is_checked_with_the_configuration(tmp_path: Path) -> None:
    """Exit 2 at start (ConfigError names SPOOL_DIR), before any database work."""
    env = {"DATABASE_URL": "postgresql://u:p@h/db", "MQTT_MODE": "disabled"}
    spool_dir = tmp_path / "shared"
    spool_dir.mkdir(mode=0o700)
    spool_dir.chmod(0o777)
    with pytest.raises(ConfigError, match=r"SPOOL_DIR=.* is refused: writable by group"):
        load_settings({**env, "SPOOL_DIR": str(spool_dir)})
    spool_dir.chmod(0o755)
    assert load_settings({**env, "SPOOL_DIR": str(spool_dir)}).spool_dir == spool_dir


async def test_a_symlinked_segment_is_neither_replayed_nor_appended_to(tmp_path: Path) -> None:
    """Symlinks stand where the replay would read and where the next segments would be
    created (before start, and after: a name squatted while running). The target file is
    untouched; the spool replays and appends without it."""
    directory = tmp_path / "spool" / "c-i"
    directory.mkdir(parents=True, mode=0o700)
    (directory / "0000000000000001.seg").write_bytes(frame(good(1)))
    target = tmp_path / "victim"
    target.write_bytes(frame(good(9)))  # valid records: they would be replayed
    (directory / "0000000000000002.seg").symlink_to(target)
    (directory / "0000000000000003.seg").symlink_to(target)
    before = target.read_bytes()
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1)  # rotate every batch
    seen: list[bytes] = []
    spool.open(lambda record, item: seen.append(record.body))
    (directory / "0000000000000005.seg").symlink_to(target)  # squats the next rotation
    writer = asyncio.create_task(spool.run())
    try:
        replayed = []
        while spool.replay_cursor is not None:
            records, damaged = await spool.read_backlog()
            replayed += [r.body for r in records]
            spool.advance(records, damaged_rest=damaged)
        assert replayed == [good(1)]
        segments: set[int] = set()

        async def rotated() -> bool:
            position = await asyncio.wait_for(spool.append(b"new-%d" % len(seen), None), 5)
            segments.add(position.segment)
            return len(segments) > 1

        await wait_until(rotated, 10, "never rotated past the squatter")
        assert segments == {4, 6}  # 5 was skipped, never opened
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await spool.close()
    assert target.read_bytes() == before
    assert spool.stats.ignored_files == 2 and spool.stats.rotation_failures >= 1
    assert seen[0] == b"new-0"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, 10), value=json_values, reject_index=st.integers(0, 5))
def test_any_value_in_any_field_decodes_well_typed_or_raises_value_error(
    index: int, value: object, reject_index: int
) -> None:
    """Survive ANY single bad record: whatever JSON stands in any field, decode either
    gives entries the buffer and the store can handle, or raises ValueError."""
    fields = orjson.loads(good(0))
    fields["r"][0][index] = value
    fields["j"] = [["t", "", "r", "2026-03-01T12:00:00+00:00", "0" * 64, 0]]
    fields["j"][0][reject_index] = value
    try:
        decoded = spool_codec.decode(orjson.dumps(fields))
    except ValueError:
        return
    for r in decoded.readings:
        assert isinstance(r.dados, bytes) and isinstance(orjson.loads(r.dados), dict)
        assert r.timestamp_dados.utcoffset() is not None
        assert r.energia_kwh is None or isinstance(r.energia_kwh, int | float)
    for j in decoded.rejects:
        assert isinstance(j.payload, bytes) and len(j.payload_sha256) == 64


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "r", "j", "x"]), json_values) | json_values)
def test_any_json_document_decodes_or_raises_value_error(document: object) -> None:
    with contextlib.suppress(ValueError):
        spool_codec.decode(orjson.dumps(document))
