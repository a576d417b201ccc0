"""A `done/total` counter for long loops over images, on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line `done/total` counter on stderr, redrawn at most a few times a second."""

    def __init__(self, total: int, stream=None, every: float = 0.25):
        self.total, self.done, self.stream, self.every, self._last = total, 0, stream or sys.stderr, every, 0.0

    def step(self, n: int = 1) -> None:
        """Count n more finished items."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            self.stream.write(f"\r{self.done}/{self.total} images")
            self.stream.flush()

    def say(self, line: str) -> None:
        """Print a line without garbling the counter."""
        if self.done:
            self.stream.write("\r" + " " * 40 + "\r")
        self.stream.write(line + "\n")
        self._last = 0.0

    def close(self) -> None:
        """End the counter's line."""
        if self.done:
            self.stream.write("\n")
            self.stream.flush()
