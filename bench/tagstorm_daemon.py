"""The ocifs mount daemon with a stopwatch on every close of an ``index.json`` (tag-storm only).

``python -P -m bench.tagstorm_daemon RECORDS mount URL MNT -f ...`` runs ``ocifs mount`` in the
foreground after wrapping :meth:`ocifs.files.Files.flush` (close(2) of a descriptor, the FUSE
operation that publishes a pending version). Each flush of an ``index.json`` descriptor that had
something to publish appends one JSON line to ``RECORDS``: ``{"s": seconds, "ok": bool}``, the
time the daemon spent on it, queueing behind other closes included.

Why a wrapper and not the mount's own metrics: the same stopwatch must time the code before and
after a change (``bench.tagstorm --build before=REV``), and older code has no such metric. The
wrapper only reads the handle table and a clock, so it times both builds the same way.
Which ``ocifs`` package is timed is up to ``PYTHONPATH`` (the first line of ``RECORDS`` says
which file was imported).
"""

from __future__ import annotations

import json
import os
import sys
import time


def install(records: str) -> None:
    """Wrap Files.flush so each index.json close appends its duration to ``records``."""
    import ocifs
    from ocifs import files
    from ocifs.layout import is_index

    fd = os.open(records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(rec: dict) -> None:
        os.write(fd, (json.dumps(rec) + "\n").encode())  # one small append: atomic, no buffering

    emit({"ocifs": ocifs.__file__, "pid": os.getpid()})
    original = files.Files.flush

    async def flush(self: files.Files, fh: int) -> None:
        h = self.handles.get(fh)
        timed = h is not None and h.session is not None and h.session.dirty and is_index(h.node.path)
        t0 = time.monotonic()
        try:
            await original(self, fh)
        except BaseException:
            if timed:
                emit({"s": time.monotonic() - t0, "ok": False})
            raise
        if timed:
            emit({"s": time.monotonic() - t0, "ok": True})

    files.Files.flush = flush  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    records, rest = argv[0], argv[1:]
    install(records)
    from ocifs.cli import main as ocifs_main

    return ocifs_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
