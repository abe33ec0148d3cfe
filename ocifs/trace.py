"""Time-line events of the data path, for ``python -m bench.anatomy`` (off unless debug).

One log line per event on the ``ocifs.trace`` logger at DEBUG: ``<monotonic seconds> <event>
key=value ...``. Events are per part, per chunk GET and per commit, never per FUSE request, so
even when on they cost nothing measurable (a 1 GiB push logs ~400 lines). ``--log-level
debug`` turns them on; the bench tool parses them into a time line of one push or pull (parts
in flight, what the writer waited on, how long close took).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ocifs.trace")


def on() -> bool:
    """Whether events are recorded (checked by callers before they compute fields)."""
    return log.isEnabledFor(logging.DEBUG)


def event(name: str, **fields: object) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%.6f %s %s", time.monotonic(), name, " ".join(f"{k}={v}" for k, v in fields.items()))


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in /proc (``comm``, 15 bytes), so per-thread CPU
    (top -H, py-spy, bench.lab.thread_cpu) tells ocifs's threads apart; Python's own thread
    names stay inside Python."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
