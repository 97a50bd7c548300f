"""The end of `aupus-ha demo`: a device it silences on purpose, the data-loss report of its
own run, the console's URL, and a screenshot of the console during the failover.

Why silence a device: a report that is always empty proves little. One meter stops
publishing for the middle third of the simulated window and comes back; the report the
cluster itself answers (`GET /health/gaps`, the same route the console draws from) must
name that meter and no other equipment, with the gap where the demo put it. Meters
without NTP are left out of it: the ingest times their readings by their arrival, so
they sit at the real minute of the run, not in the simulated window (the demo's lost /
duplicated count covers them, matched by content).

The screenshot is taken by Debian's `chromium` on its own (`--headless --screenshot`),
not through a driver: the lab needs no browser-automation package for it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from aupus_ha.decoding.timestamps import BRASILIA
from aupus_ha.lab.localcluster import InstanceProcess
from aupus_ha.lab.simulate import (
    FAMILY_INVERTER,
    FAMILY_M160_FLAT,
    FAMILY_M160_WRAPPED,
    DeviceSpec,
    Fleet,
    SimMessage,
)

QUIET_FROM: Final = 0.25  # the silenced device stops at this fraction of the window...
QUIET_TO: Final = 0.6  # ...and publishes again from this one (a closed gap)
REPORT_TIMEOUT_S: Final = 30.0
CHROMIUM: Final = "chromium"
SCREENSHOT_TIMEOUT_S: Final = 60.0
# Real milliseconds the page may run (its fetches included) before the picture is taken.
SCREENSHOT_BUDGET_MS: Final = 6000
# A headless browser that talks to nothing but the page (tests/acceptance/test_console.py
# drives the same one).
CHROMIUM_HEADLESS_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CHROMIUM_FLAGS: Final = (*CHROMIUM_HEADLESS_FLAGS, "--hide-scrollbars")
SCREEN_WIDTH: Final = 1280
SCREEN_HEIGHT_BASE: Final = 900  # the cards above the equipment table...
SCREEN_HEIGHT_ROW: Final = 44  # ...and one table row per device
SCREEN_HEIGHT_MAX: Final = 4000


# --- the silenced device -----------------------------------------------------------------


def quiet_device(fleet: Fleet) -> DeviceSpec | None:
    """The device to silence: a meter with a clock (its gap lands in the simulated
    window), else an inverter; None when the fleet has neither."""
    preferred = (FAMILY_M160_FLAT, FAMILY_M160_WRAPPED, FAMILY_INVERTER)
    for family in preferred:
        for device in fleet.devices:
            if device.family == family and device.clock == "ntp":
                return device
    return None


@dataclass(frozen=True, slots=True)
class QuietFleet(Fleet):
    """The fleet, with one device silent from `quiet_from` until `quiet_to` (simulated)."""

    quiet_id: str | None = None
    quiet_from: datetime | None = None
    quiet_to: datetime | None = None

    def messages(
        self, start: datetime | None = None, count: int | None = None
    ) -> Iterator[SimMessage]:
        # Fleet.messages named explicitly: a slots dataclass breaks the bare super().
        for message in Fleet.messages(self, start, count):
            if not self.silences(message):
                yield message

    def silences(self, message: SimMessage) -> bool:
        if message.device_id != self.quiet_id or self.quiet_from is None:
            return False
        return self.quiet_from <= message.at < (self.quiet_to or message.at)


def quieted(fleet: Fleet, start: datetime, span: timedelta) -> QuietFleet:
    """`fleet` with its quiet device silenced for the middle part of [start, start + span]."""
    device = quiet_device(fleet)
    return QuietFleet(
        fleet.devices,
        fleet.seed,
        fleet.bad_ratio,
        quiet_id=device.id if device else None,
        quiet_from=start + span * QUIET_FROM,
        quiet_to=start + span * QUIET_TO,
    )


# --- the data-loss report ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LossReport:
    """What the cluster's report says about the run, and whether that is what the demo did."""

    lines: list[str]
    with_gaps: list[str]  # equipment ids the report found gaps for
    expected: list[str]  # the device the demo silenced (or none)

    @property
    def as_expected(self) -> bool:
        return self.with_gaps == self.expected


async def data_loss_report(
    node: InstanceProcess, fleet: QuietFleet, start: datetime, end: datetime
) -> LossReport:
    """GET /health/gaps for the simulated window on `node`, devices timed by arrival left out."""
    query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
    status, body = await node.get(f"/health/gaps?{query}", timeout=REPORT_TIMEOUT_S)
    expected = [fleet.quiet_id] if fleet.quiet_id else []
    if status != 200 or body is None:
        return LossReport([f"  (no report: /health/gaps answered {status} {body})"], [], expected)
    clockless = {d.id for d in fleet.devices if d.clock != "ntp"}
    rows = [e for e in body.get("equipamentos", []) if e.get("equipamento_id") not in clockless]
    lines = [
        f"data-loss report of this run (GET /health/gaps on {node.name}, simulated window "
        f"{_local(start)} -> {_local(end)} Brasilia):"
    ]
    with_gaps = [str(e["equipamento_id"]) for e in rows if e.get("gaps")]
    for e in rows:
        if e.get("gaps"):
            lines += _equipment_lines(e, on_purpose=e["equipamento_id"] == fleet.quiet_id)
    complete = len(rows) - len(with_gaps)
    lines.append(f"  the other {complete} equipment: no gap (coverage 100 %)")
    if clockless:
        lines.append(
            f"  left out, timed by their arrival (real time, not the simulated window): "
            f"{', '.join(sorted(clockless))}"
        )
    lines.append(f"equipment with gaps: {', '.join(with_gaps) or 'none'}")
    return LossReport(lines, with_gaps, expected)


def _equipment_lines(e: Mapping[str, Any], *, on_purpose: bool) -> list[str]:
    kwh = e.get("missing_kwh")
    head = (
        f"  {e['equipamento_id']}  {e.get('nome') or ''}: {len(e['gaps'])} gap(s), coverage "
        f"{e['coverage_pct']:g} %, missing {'unknown' if kwh is None else f'{kwh:g} kWh'}"
        + ("  <- silenced on purpose by the demo" if on_purpose else "  <- UNEXPECTED")
    )
    out = [head]
    for g in e["gaps"]:
        start, end = datetime.fromisoformat(g["start"]), datetime.fromisoformat(g["end"])
        readings = g.get("expected_readings")
        out.append(
            f"      {_local(start)} -> {_local(end)}  {g['minutes']:g} min, "
            f"{'?' if readings is None else readings} readings missing"
        )
    return out


# --- the console ---------------------------------------------------------------------------


def console_url(node: InstanceProcess, start: datetime, end: datetime, refresh_s: int = 5) -> str:
    """The console of `node`, its gap bars over the simulated window."""
    query = urlencode({"de": start.isoformat(), "ate": end.isoformat(), "intervalo": refresh_s})
    return f"http://{node.http_host}:{node.http_port}/?{query}"


def find_chromium() -> str | None:
    return shutil.which(CHROMIUM) or shutil.which("chromium-browser")


def screen_height(devices: int) -> int:
    """Tall enough for the whole equipment table (a headless shot is the window only)."""
    return min(SCREEN_HEIGHT_MAX, SCREEN_HEIGHT_BASE + SCREEN_HEIGHT_ROW * devices)


def take_screenshot(url: str, target: Path, height: int = SCREEN_HEIGHT_BASE) -> str:
    """Headless chromium's picture of `url` into `target` (blocking: run it in a thread).

    Returns a line saying what happened; never raises for a missing or failing browser.
    """
    binary = find_chromium()
    if binary is None:
        return "screenshot skipped: no chromium on PATH (Debian: apt install chromium)"
    target.parent.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="aupus-demo-chromium-")
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={SCREEN_WIDTH},{height}",
        f"--virtual-time-budget={SCREENSHOT_BUDGET_MS}",
        f"--screenshot={target.resolve()}",
        url,
    ]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, our own URL
            command, capture_output=True, timeout=SCREENSHOT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"screenshot failed: {exc}"
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if done.returncode != 0 or not target.exists():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"screenshot failed (chromium exit {done.returncode}): {' '.join(tail)}"
    return f"screenshot of the console during the failover: {target}"


async def screenshot_soon(url: str, target: Path, devices: int) -> str:
    """`take_screenshot` in a worker thread, so the demo keeps publishing meanwhile."""
    return await asyncio.to_thread(take_screenshot, url, target, screen_height(devices))


def console_lines(
    nodes: Sequence[InstanceProcess], leader: InstanceProcess | None, url: str
) -> list[str]:
    """Where to look: the leader's console first, the other instance's too."""
    lines = [
        f"console: {url}  ({leader.name if leader else 'an instance'}; every instance serves it)"
    ]
    lines += [
        f"         http://{n.http_host}:{n.http_port}/  ({n.name})"
        for n in nodes
        if n is not leader
    ]
    return lines


def _local(ts: datetime) -> str:
    return ts.astimezone(BRASILIA).strftime("%H:%M")
