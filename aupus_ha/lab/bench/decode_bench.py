"""Micro-benchmark of `Decoder.decode`: microseconds per message, per payload family.

Usage: python -m aupus_ha.lab.bench.decode_bench [--n 50000] [--repeat 5]

Each case decodes the same payload `n` times, `repeat` times over, and reports the best
and the median run (best is the least disturbed by the machine; median shows spread).
No timing is asserted: this is for comparing changes on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from aupus_ha.config import default_value
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Decoded, Equipment

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
TOPIC = "aupus/bench/meter"
EQUIPMENT = [Equipment("bench-1", TOPIC)]
# The family is chosen by the equipment first (DOMAIN v2): typed equipment for those.
M160_EQUIPMENT = [Equipment("bench-1", TOPIC, type_code="M-160")]
GATEWAY_EQUIPMENT = [Equipment("bench-1", TOPIC, type_code="SSU_A966", type_category="Gateway")]
# Fixed, after every fixture's time, so results do not depend on the clock.
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def cases() -> dict[str, tuple[bytes, list[Equipment]]]:
    """Name → (payload, the topic's equipment), one per family plus typical bad input."""
    m160 = (FIXTURES / "m160_resumo.json").read_bytes()
    return {
        "generic": ((FIXTURES / "generic_reading.json").read_bytes(), EQUIPMENT),
        "m160 wrapped": (m160, M160_EQUIPMENT),
        "m160 unwrapped": (orjson.dumps(orjson.loads(m160)["Resumo"]), M160_EQUIPMENT),
        "m160 flat ton": ((FIXTURES / "m160_ton_flat.json").read_bytes(), M160_EQUIPMENT),
        "a966 gateway": ((FIXTURES / "a966_ssu_state.json").read_bytes(), GATEWAY_EQUIPMENT),
        "inverter sample": ((FIXTURES / "inverter_reading.json").read_bytes(), EQUIPMENT),
        "bad: not json": (b"not json at all", EQUIPMENT),
        # DOMAIN v2: an unusable time is stored at arrival (it was a reject in v1).
        "clockless": (b'{"timestamp": "31/02/2026 25:61:00", "power": 1}', EQUIPMENT),
    }


def time_case(decoder: Decoder, payload: bytes, equipment: list[Equipment], n: int) -> float:
    """Seconds for `n` decodes of `payload`."""
    decode = decoder.decode
    start = time.perf_counter()
    for _ in range(n):
        decode(TOPIC, payload, equipment, RECEIVED)
    return time.perf_counter() - start


def describe(decoded: Decoded) -> str:
    if decoded.rejects:
        return "reject " + decoded.rejects[0].reason.split(":", 1)[0]
    return f"{len(decoded.readings)} reading(s), {decoded.readings[0].qualidade}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=50_000, help="decodes per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case")
    args = parser.parse_args()
    decoder = Decoder(max_payload_bytes=default_value("MAX_PAYLOAD_BYTES"))  # the instances'
    print(f"{'case':<24}{'bytes':>7}{'best µs':>10}{'median µs':>11}  outcome")
    for name, (payload, equipment) in cases().items():
        outcome = describe(decoder.decode(TOPIC, payload, equipment, RECEIVED))
        time_case(decoder, payload, equipment, min(args.n, 1000))  # warm up
        runs = [
            time_case(decoder, payload, equipment, args.n) / args.n * 1e6
            for _ in range(args.repeat)
        ]
        best, median = min(runs), statistics.median(runs)
        print(f"{name:<24}{len(payload):>7}{best:>10.2f}{median:>11.2f}  {outcome}")


if __name__ == "__main__":
    main()
