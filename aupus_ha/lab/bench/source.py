"""The readings the bench publishes and writes: unique, numbered, of a chosen size."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson

from aupus_ha.pipeline.readings import Reading


class ReadingSource:
    """Unique generic readings of about `payload_bytes`, round-robin over the equipment.

    `seq` numbers every reading of the run, so a phase is a range of seq; reading n of
    an equipment has `timestamp` start + n s (unique natural keys), and `sent_at` is the
    wall time at which it is built, i.e. published.
    """

    def __init__(self, equipment: list[tuple[str, str]], payload_bytes: int) -> None:
        self._equipment = equipment
        self._start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
        self.seq = 0
        self._pad = ""
        sample = len(self._payload(10**7, self._start, time.time()))
        self._pad = "x" * max(0, payload_bytes - sample - len(',"tag":""'))

    def next(self) -> tuple[str, bytes]:
        """(topic, payload) of the next reading, stamped with the current wall time."""
        seq = self.seq
        self.seq += 1
        _, topic = self._equipment[seq % len(self._equipment)]
        return topic, self._payload(seq, self._timestamp(seq), time.time())

    def readings(self, count: int) -> list[Reading]:
        """The next `count` readings as the decoder would produce them (for baselines)."""
        out = []
        for _ in range(count):
            seq = self.seq
            self.seq += 1
            equipment_id, _ = self._equipment[seq % len(self._equipment)]
            ts = self._timestamp(seq)
            out.append(Reading(equipment_id, ts, self._payload(seq, ts, time.time())))
        return out

    def _timestamp(self, seq: int) -> datetime:
        return self._start + timedelta(seconds=seq // len(self._equipment), milliseconds=7)

    def _payload(self, seq: int, ts: datetime, sent_at: float) -> bytes:
        reading: dict[str, object] = {
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "sent_at": round(sent_at, 6),
            "seq": seq,
            "power_w": 1000 + seq % 997,
            "voltage_v": [220.1, 219.8, 221.3],
            "current_a": [4.51, 4.48, 4.62],
            "energy_kwh": round(seq * 0.0125, 4),
            "frequency_hz": 60.01,
            "power_factor": 0.97,
            "temperature_c": 41.5,
            "status": "ok",
        }
        if self._pad:
            reading["tag"] = self._pad
        return orjson.dumps(reading)
