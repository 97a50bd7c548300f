"""The lab's one progress line: `[  12.34s] what is happening`, seconds since the start.

demo, bench and chaos tell a person what they are doing as they go, in the same form.
`t0` is the start in wall-clock seconds (`time.time()`), the clock PostgreSQL stamps rows
and handovers with on this machine: the runs place what they read back from the database
on their own timeline with it. The elapsed time shown is monotonic.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """One line per step, with the time since this object was made."""

    __slots__ = ("_started", "_to_stderr", "t0")

    def __init__(self, *, to_stderr: bool = False) -> None:
        # stderr when stdout carries a result (`aupus-ha bench --json`).
        self._to_stderr = to_stderr
        self._started = time.monotonic()
        self.t0 = time.time()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def say(self, text: str) -> None:
        print(f"[{self.elapsed_s:7.2f}s] {text}", file=self._stream(), flush=True)

    def _stream(self) -> TextIO:
        # Looked up on each line, not kept: pytest's capsys replaces sys.stdout.
        return sys.stderr if self._to_stderr else sys.stdout
