"""The project's own error types: each carries a one-line message naming the file and the problem."""

import re


class KerasUnetError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(KerasUnetError):
    """A data file (annotation, image, mask) that cannot be used."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(KerasUnetError):
    """A setting, command-line flag or config file that cannot be used."""


def first_line(exc) -> str:
    """An exception's first non-empty line, stripped, or its type name when it has no message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def last_line(exc) -> str:
    """An exception's last non-empty line without object addresses (OpenCV and pydicom put the reason there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", lines[-1]) if lines else type(exc).__name__


class TrainingError(KerasUnetError):
    """Training cannot go on (a NaN loss, say)."""


class ExportError(KerasUnetError):
    """An artefact could not be converted or written."""
