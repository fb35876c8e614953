"""Progress: one line redrawn in place on a terminal, a line now and then otherwise."""

from __future__ import annotations

import io

from fp4sweep.sweep.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_redrawn():
    stream = Terminal()
    progress = Progress(total=4, stream=stream, every=3600)
    progress.running = 2
    progress.update()
    progress.counts["done"] += 1
    progress.counts["failed"] += 1
    progress.update()
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r\033[K") == 3 and text.count("\n") == 1
    assert "0/4, 0 done, 0 diverged, 0 failed, 2 running, 2 pending" in text
    last = text.rsplit("\r\033[K", 1)[1]
    assert "2/4, 1 done, 0 diverged, 1 failed, 0 running, 2 pending" in last and "ETA" in last


def test_elsewhere_lines_come_every_so_often():
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream, every=3600)
    progress.update()  # the first line comes at once
    progress.update()  # then not before `every` seconds
    progress.counts["diverged"] += 2
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert "2/2, 0 done, 2 diverged, 0 failed, 0 running, 0 pending" in lines[1]
    assert lines[1].endswith("ETA 0m00s")
