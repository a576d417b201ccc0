"""A `done/total` counter for long loops over images, on stderr, with the time left."""

from __future__ import annotations

import math
import sys
import time


def is_terminal(stream) -> bool:
    """Whether stream is an interactive terminal (a log file, a pipe or a StringIO is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def time_left(seconds: float) -> str:
    """`about 40 s left`, `about 7 min left`, `about 2 h 5 min left`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60} min left"


class StatusLine:
    """One terminal line redrawn in place (`\\r`), blanking what a longer earlier text left; clear() empties it."""

    def __init__(self, stream):
        self.stream, self.width = stream, 0

    def draw(self, text: str) -> None:
        """Show text on the line."""
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def clear(self) -> None:
        """Blank the line (before something else prints there); a no-op when nothing is shown."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class Progress:
    """A `done/total` counter on stderr with the time left once the first items are done.

    On a terminal one line is redrawn in place (`\\r`, at most every `every` seconds); elsewhere (a log file, a pipe)
    each step is a line of its own, or only every ~5 % of the total for long loops, so a log never runs the counts
    together."""

    def __init__(self, total: int, stream=None, every: float = 0.25, unit: str = "images"):
        self.total, self.done, self.stream, self.every, self.unit = total, 0, stream or sys.stderr, every, unit
        self.tty = is_terminal(self.stream)
        self.stride = max(1, math.ceil(total / 20))  # not a terminal: a line every ~5 %, or every step if fewer
        self._line = StatusLine(self.stream)
        self._started, self._last, self._written = time.monotonic(), 0.0, 0

    def text(self) -> str:
        """`12/40 images  (about 1 min left)`; the time left once something is done and something is left."""
        line = f"{self.done}/{self.total} {self.unit}"
        if 0 < self.done < self.total:
            elapsed = time.monotonic() - self._started
            line += f"  ({time_left(elapsed / self.done * (self.total - self.done))})"
        return line

    def step(self, n: int = 1) -> None:
        """Count n more finished items."""
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._last >= self.every or self.done >= self.total:
                self._last = now
                self._line.draw(self.text())
        elif self.done >= self.total or self.done - self._written >= self.stride:
            self._write_count()

    def _write_count(self) -> None:
        """The count as a line of its own (not a terminal)."""
        self._written = self.done
        self.stream.write(self.text() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Blank the counter's terminal line (before something else prints there); it is redrawn at the next step."""
        self._line.clear()
        self._last = 0.0

    def say(self, line: str) -> None:
        """Print a line without garbling the counter."""
        self.clear()
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last = 0.0

    def close(self) -> None:
        """End the counter's line (a terminal), or write the last count if it was not written (elsewhere)."""
        if self.tty:
            if self.done:
                self._line.draw(self.text())  # the final count, however recently the last one was drawn
                self.stream.write("\n")
                self.stream.flush()
        elif self.done and self._written != self.done:
            self._write_count()
