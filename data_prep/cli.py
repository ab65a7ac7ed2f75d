"""One error style for every command line (`python -m <stage>` and predict).

A user's mistake (a missing file, a bad parameter, a damaged record, an unreachable server)
is one line on stderr that names the file and the fix, and exit status 1; `--debug` anywhere on
the command line shows the traceback instead (and the stages' debug logs). `main(argv)` itself
still raises, so that scripts and tests calling it see the exception.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

DEBUG_FLAG = "--debug"
USER_ERRORS = (ValueError, OSError)  # OSError: missing files, permissions, network, full disk


def run_main(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Runs a stage's `main(argv)` as a command: errors are one line unless --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    if debug:
        args = [a for a in args if a != DEBUG_FLAG]
        for package in ("data_prep", "pipeline"):
            logging.getLogger(package).setLevel(logging.DEBUG)
    try:
        main(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if debug:
            raise
        if isinstance(err, USER_ERRORS):
            line = f"error: {err}"
        else:  # not a foreseen mistake: most likely a bug, which the traceback will show
            line = (f"error: unexpected {type(err).__name__}: {err}; re-run with {DEBUG_FLAG} "
                    "for the traceback and report it")
        print(line, file=sys.stderr)
        raise SystemExit(1) from None
