"""Shared command-line plumbing: one-line errors for the project's own error types."""

from __future__ import annotations

import sys

from keras_unet.errors import KerasUnetError


def run_main(main, argv=None) -> int:
    """Call main(argv); a KerasUnetError becomes `error: ...` on stderr and exit code 2 (traceback with --debug)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        return main(args) or 0
    except KerasUnetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
