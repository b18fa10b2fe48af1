"""Progress of long work on stderr (extraction, training): done/total, rate and ETA, on a terminal and in logs."""
from __future__ import annotations

import datetime as _dt
import sys
import time


class ProgressLine:
    """'label: done/total unit, rate, ETA[, detail]' on stderr: rewritten in place on a terminal (every 0.5 s),
    else one line every 30 s (logs of long runs under nohup or a scheduler). enabled=False silences it."""

    LOG_INTERVAL_S = 30.0

    def __init__(self, total: int, already: int = 0, stream=None, enabled: bool | None = None,
                 label: str = "extract", unit: str = "videos"):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True if enabled is None else enabled
        self.interval = 0.5 if self.tty else self.LOG_INTERVAL_S
        self.label, self.unit = label, unit
        self.total, self.already, self.done, self.failed = total, already, 0, 0
        self.start = self.last = time.monotonic()
        self.pending_newline = False
        if self.enabled and not self.tty:
            self.stream.write(f"{label}: {already}/{total} {unit} already done; starting (progress every "
                              f"{self.interval:.0f} s)\n")
            self.stream.flush()

    def update(self, failed: bool = False, force: bool = False, count: int = 1, detail: str = "",
               fraction: float | None = None) -> None:
        """`count` more done (`failed` ones counted apart); detail is appended to the line (e.g. the loss).

        fraction: the share of the whole work done, where units differ in cost (a fit's stacks of models): the ETA
        then follows it instead of the count."""
        self.done += count
        self.failed += int(failed)
        now = time.monotonic()
        finished = self.already + self.done >= self.total
        if not self.enabled or (now - self.last < self.interval and not force and not (finished and self.tty)):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if fraction is not None:
            eta = _dt.timedelta(seconds=round(elapsed * (1 - fraction) / fraction)) if fraction > 0 else "?"
        else:
            left = self.total - self.already - self.done
            eta = _dt.timedelta(seconds=round(left / rate)) if rate > 0 else "?"
        failed_text = f", {self.failed} failed" if self.failed else ""
        text = (f"{self.label}: {self.already + self.done}/{self.total} {self.unit}{failed_text}  "
                f"{rate:.2f} {self.unit}/s  ETA {eta}" + (f"  {detail}" if detail else ""))
        if self.tty:
            self.stream.write(f"\r{text}   ")
            self.pending_newline = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.pending_newline:
            self.stream.write("\n")
            self.stream.flush()
