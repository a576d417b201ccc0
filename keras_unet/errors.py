"""The project's own error types: each carries a one-line message naming the file and the problem."""


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
