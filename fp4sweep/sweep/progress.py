"""Progress of a running sweep: one updating line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Counts of finished trials by status, the running and pending ones, rate and ETA."""

    def __init__(self, total: int, stream: TextIO, every: float = 30.0) -> None:
        self.total = total
        self.stream = stream
        self.every = every
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.tty = stream.isatty()
        self._start = time.monotonic()
        self._last_line = -float("inf")

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        pending = self.total - self.finished - self.running
        parts = [f"{self.finished}/{self.total}"]
        parts += [f"{self.counts[s]} {s}" for s in ("done", "diverged", "failed")]
        parts += [f"{self.running} running", f"{pending} pending"]
        if self.finished:
            rate = self.finished / elapsed
            parts.append(f"{rate * 60:.1f}/min")
            parts.append(f"ETA {_duration((self.total - self.finished) / rate)}")
        return f"[{_duration(elapsed)}] " + ", ".join(parts)

    def update(self, force: bool = False) -> None:
        """Redraw the terminal line, or print a line if ``every`` seconds have passed."""
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
        elif force or now - self._last_line >= self.every:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        """The final line, kept on screen."""
        self.running = 0
        if self.tty:
            self.stream.write("\r\033[K")
        print(self.line(), file=self.stream, flush=True)
