"""`aupus-ha demo` as a user runs it: no reading lost or doubled, nothing left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from aupus_ha.lab.demo import DemoOptions, demo_fleet
from aupus_ha.lab.democonsole import quiet_device
from aupus_ha.lab.simulate import FAMILY_LABELS, FAMILY_M160_FLAT

DEMO_TIMEOUT_S = 150.0
POLL_S = 0.05
HOLD_S = 4  # the demo keeps its consoles up this long at the end: the test opens one
CONSOLE_LINE = re.compile(r"^console: (http://127\.0\.0\.1:\d+/\S*)", re.MULTILINE)

ProcessId = tuple[int, float]  # (pid, create_time): a pid alone may be recycled


def _descendants(pid: int) -> set[ProcessId]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found: set[ProcessId] = set()
    for child in children:
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def _still_running(process: ProcessId) -> bool:
    pid, created = process
    try:
        proc = psutil.Process(pid)
        return bool(
            proc.create_time() == created
            and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        )
    except psutil.NoSuchProcess:
        return False


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("aupus-demo-*"))


def _console_page(url: str) -> str | None:
    """The console's HTML while the demo holds, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as page:  # noqa: S310 - our own http URL
            return str(page.read().decode())
    except OSError:
        return None


def test_demo_loses_nothing_and_cleans_up(tmp_path: Path) -> None:
    """The short demo ends 0 lost / 0 duplicated with every device family (DOMAIN v2)
    stored, the clockless meter's readings by their arrival; its own data-loss report
    names only the device it silenced on purpose; it points at a console that answers
    while it holds; its processes and temp dirs all gone."""
    dirs_before = _demo_dirs()
    output = tmp_path / "demo.out"
    seen: set[ProcessId] = set()
    console: str | None = None
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aupus_ha",
                "demo",
                "--duration",
                "8",
                "--fleet",
                "6",
                "--hold",
                str(HOLD_S),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,  # no stray ./.env
        )
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        try:
            while proc.poll() is None:  # every child it starts, the restarted instance too
                seen |= _descendants(proc.pid)
                url = CONSOLE_LINE.search(output.read_text(errors="replace"))
                if console is None and url:  # the demo holds now: the page must answer
                    console = _console_page(url.group(1))
                assert time.monotonic() < deadline, "the demo did not finish in time"
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = output.read_text(errors="replace")

    assert proc.returncode == 0, text
    assert "lost 0" in text and "duplicated 0" in text, text
    for family, label in FAMILY_LABELS.items():  # every v2 family published and stored
        (line,) = [row for row in text.splitlines() if row.strip().startswith(label)]
        published, bad, no_clock, stored, energy, arrival, rejected = map(int, line.split()[-7:])
        assert published > 0 and stored > 0 and rejected == bad, (family, line)
        if family == FAMILY_M160_FLAT:  # the meter without NTP: stored, timed by arrival
            assert no_clock > 0 and arrival == no_clock and energy == stored, line
    quiet = quiet_device(demo_fleet(DemoOptions(8, 6)))
    assert quiet is not None
    assert f"equipment with gaps: {quiet.id}\n" in text, text
    (flagged,) = [row for row in text.splitlines() if "silenced on purpose" in row]
    assert flagged.split()[0] == quiet.id and "UNEXPECTED" not in text, text
    assert console is not None and "console de operação" in console, text
    assert seen, "no child process was observed"
    leftovers = [p for p in seen if _still_running(p)]
    assert not leftovers, f"processes left behind: {leftovers}"
    assert _demo_dirs() - dirs_before == set()
