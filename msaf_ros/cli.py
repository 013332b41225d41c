"""What every msaf_ros program does around its work: exit codes, signals, one-line errors.

Each console script's ``main`` parses its arguments and hands its work to :func:`run_cli`:

- exit code 0 (or what the work returns) when it is done;
- :class:`~msaf_ros.errors.MsafRosError`: its one-line message, exit code 1 (2 for the node
  benchmarks, whose 1 means a failed check);
- SIGINT / SIGTERM: raised in the main thread as :class:`Interrupted` (so ``finally`` blocks
  clean up), one line, exit code 130 / 143; or, for the node, a stop event is set and the
  work ends on its own;
- any other exception: ``TypeName: first line``, exit code 1; with ``--debug`` the traceback.

argparse's own usage errors keep their exit code 2.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable, Dict, Optional

from .errors import MsafRosError, first_line, one_line

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the program; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise Interrupted(signum)


def install_signal_handlers(handler: Callable[[int, Any], None]) -> Dict[int, Any]:
    """Route SIGINT and SIGTERM to ``handler``; returns the old handlers (none off the main
    thread, where Python allows no handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore_signal_handlers(old: Dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def ignoring_signals() -> Dict[int, Any]:
    """Ignore SIGINT and SIGTERM (while cleaning up); undo with restore_signal_handlers."""
    return install_signal_handlers(signal.SIG_IGN)


def run_cli(prefix: str, work: Callable[[], int], *, stop: Optional[threading.Event] = None,
            error_code: int = EXIT_ERROR, interrupted: str = "",
            debug: Optional[bool] = None) -> int:
    """Run ``work()`` and turn its outcome into an exit code and at most one line on stderr.

    ``prefix`` starts every line (``'msaf-bag:'``, ``'[segment_node]'``). ``stop``: SIGINT
    and SIGTERM set this event instead of raising (the work watches it and returns).
    ``error_code``: the exit code of a :class:`MsafRosError`. ``interrupted``: what the user
    should know after a signal (``'no output written'``). ``debug``: None when the program
    has no ``--debug`` option; False adds the hint to rerun with it; True re-raises
    unexpected exceptions (traceback).
    """
    handler = (lambda signum, frame: stop.set()) if stop is not None else _raise_interrupted
    old = install_signal_handlers(handler)
    try:
        return work()
    except MsafRosError as e:
        _say(f"{prefix} error: {one_line(e)}")
        return error_code
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        verb = "terminated" if signum == signal.SIGTERM else "interrupted"
        _say(f"{prefix} {verb}" + (f"; {interrupted}" if interrupted else ""))
        return 128 + int(signum)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        hint = "" if debug is None else " (rerun with --debug for the traceback)"
        _say(f"{prefix} error: {first_line(e)}{hint}")
        return EXIT_ERROR
    finally:
        restore_signal_handlers(old)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def set_torch_threads(n: Optional[int]) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given (MsafRosError when n < 1)."""
    if n is None:
        return
    if n < 1:
        raise MsafRosError(f"--threads must be >= 1, got {n}")
    import torch  # noqa: PLC0415
    torch.set_num_threads(n)
