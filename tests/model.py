"""A reference model of ocifs's file semantics, and random operation sequences to check it.

The model is the promise (docs/SEMANTICS.md) written as a few dictionaries: what S3 holds,
each process's pending version of each file, each open descriptor. A *driver* runs the same
sequence against the real thing — ocifs's FUSE operations on the fake S3 (tests/fsrig.py), or a
real mount with one real process per simulated pid — and after every step the bucket must hold
exactly what the model says, and every answer (bytes, size, errno) must be one the model allows.

Sequences come from hypothesis (``sequences()``), so a failure shrinks to a short story.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
from typing import Any

from hypothesis import strategies as st

MiB = 1024 * 1024
PATHS = ("a", "b", "c")
PIDS = (1, 2, 3)
BIG = 6 * MiB  # more than one 5 MiB part: exercises the streaming multipart upload
# open modes: read, write, write+trunc, read-write, create+trunc, create+excl
FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY,
    "wt": os.O_WRONLY | os.O_TRUNC,
    "rw": os.O_RDWR,
    "ct": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "cx": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}
MODES = tuple(FLAGS)


# --- the operations ----------------------------------------------------------------------------
# Every sequence starts from two committed files, so opens and reads have something to find.
PRELUDE: list[tuple[Any, ...]] = [
    ("open", 1, "a", "ct"), ("write", 0, "start", 5, 97), ("close", 0),
    ("open", 1, "b", "ct"), ("write", 0, "start", 9, 98), ("close", 0),
]


def sequences(max_size: int = 30, faults: bool = True) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Operation sequences (after PRELUDE), weighted toward opens, writes and closes."""
    pid, path, h = st.sampled_from(PIDS), st.sampled_from(PATHS), st.integers(0, 7)
    length = st.one_of(st.integers(1, 16), st.integers(1, 16), st.integers(1, 16), st.just(BIG))
    weighted = [
        (4, st.tuples(st.just("open"), pid, path, st.sampled_from(MODES))),
        (5, st.tuples(st.just("write"), h, st.sampled_from(("start", "end", "mid")), length, st.integers(65, 90))),
        (1, st.tuples(st.just("ftruncate"), h, st.sampled_from((0, 3, 20)))),
        (1, st.tuples(st.just("truncate"), pid, path, st.sampled_from((0, 3, 20)))),
        (2, st.tuples(st.just("read"), h)),
        (1, st.tuples(st.just("stat"), pid, path)),
        (1, st.tuples(st.just("flush"), h)),
        (1, st.tuples(st.just("fsync"), h)),
        (3, st.tuples(st.just("close"), h)),
        (1, st.tuples(st.just("rename"), pid, path, path)),
        (1, st.tuples(st.just("unlink"), pid, path)),
    ]
    if faults:
        weighted.append((1, st.tuples(st.just("fail_next_publish"))))
    op = st.one_of(*[s for n, s in weighted for _ in range(n)])
    return st.lists(op, min_size=min(8, max_size), max_size=max_size).map(lambda ops: PRELUDE + ops)


# --- the model ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Inode:
    id: int
    committed: bytes | None = None  # what S3 holds for it (None: never published)
    path: str | None = None  # None once unlinked or replaced


@dataclasses.dataclass(eq=False)
class Session:
    content: bytearray
    dirty: bool
    failed: bool = False


@dataclasses.dataclass(eq=False)  # two descriptors are never "equal": identity counts
class Handle:
    inode: Inode
    pid: int
    session: Session | None  # writable handles write through the version they joined
    pinned: bytes | None  # the committed version when opened (read-only handles read it)
    readable: bool = True  # O_RDONLY or O_RDWR (the kernel answers EBADF to the others)
    returned: bool = False
    failed: bool = False

    @property
    def writable(self) -> bool:
        return self.session is not None


class Model:
    """What ocifs promises, step by step. Each method returns the allowed answers."""

    def __init__(self) -> None:
        self.paths: dict[str, Inode] = {}
        self.sessions: dict[tuple[int, int], Session] = {}
        self.handles: list[Handle] = []
        self._ids = 0
        self.fail_armed = False
        self.covered: collections.Counter[str] = collections.Counter()

    # --- what S3 must hold --------------------------------------------------------------------
    def bucket(self) -> dict[str, bytes]:
        return {p: i.committed for p, i in self.paths.items() if i.committed is not None}

    def _live(self, inode: Inode, pid: int) -> Session | None:
        s = self.sessions.get((inode.id, pid))
        return s if s is not None and not s.failed else None

    def handle(self, idx: int) -> Handle | None:
        return self.handles[idx % len(self.handles)] if self.handles else None

    def _publish(self, inode: Inode, s: Session) -> bool:
        """A publish of ``s``: False if the injected failure hit it (nothing changes)."""
        if inode.path is None:
            self.covered["publish of an unlinked file (nowhere)"] += 1
            s.dirty = False
            return True
        if self.fail_armed:
            self.fail_armed = False
            self.covered["failed publish"] += 1
            return False
        inode.committed = bytes(s.content)
        s.dirty = False
        self.covered["publish"] += 1
        return True

    def _forget_unpublished(self, inode: Inode) -> None:
        held = any(h.inode is inode for h in self.handles) or any(k[0] == inode.id for k in self.sessions)
        if inode.committed is None and inode.path is not None and not held:
            del self.paths[inode.path]
            inode.path = None
            self.covered["never-published file vanished"] += 1

    # --- operations (each returns the allowed results; an int is an errno) ------------------------
    def open(self, pid: int, path: str, mode: str) -> list[Any]:
        inode = self.paths.get(path)
        writable = mode != "r"
        if inode is None:
            if mode not in ("ct", "cx"):
                return [errno.ENOENT]
            self._ids += 1
            inode = self.paths[path] = Inode(self._ids, None, path)
            s = self.sessions[(inode.id, pid)] = Session(bytearray(), dirty=True)
            self.handles.append(Handle(inode, pid, s, None, readable=False))
            self.covered["create"] += 1
            return ["ok"]
        if mode == "cx":
            return [errno.EEXIST]
        trunc = mode in ("wt", "ct")
        s = None
        if writable:
            s = self._live(inode, pid)
            if s is not None:
                if trunc:
                    s.content = bytearray()
                    s.dirty = True
                self.covered["open joins the process's version"] += 1
            else:
                base = b"" if trunc or inode.committed is None else inode.committed
                s = self.sessions[(inode.id, pid)] = Session(bytearray(base), dirty=trunc and bool(inode.committed))
                self.covered["open for write"] += 1
        self.handles.append(Handle(inode, pid, s, inode.committed, readable=mode in ("r", "rw")))
        return ["ok"]

    def write(self, idx: int, where: str, length: int, byte: int) -> tuple[list[Any], int, bytes]:
        h = self.handle(idx)
        assert h is not None and h.session is not None
        s = h.session
        data = bytes([byte]) * length
        if h.failed or s.failed:
            self.covered["write after a failed close"] += 1
            return [errno.EIO], 0, data
        off = {"start": 0, "end": len(s.content), "mid": len(s.content) // 2}[where]
        if off > len(s.content):
            s.content.extend(b"\0" * (off - len(s.content)))
        s.content[off : off + length] = data
        s.dirty = True
        self.covered["write big" if length >= BIG else "write"] += 1
        return ["ok"], off, data

    def ftruncate(self, idx: int, size: int) -> list[Any]:
        h = self.handle(idx)
        assert h is not None and h.session is not None
        s = h.session
        if h.failed or s.failed:
            return [errno.EIO]
        self._resize(s.content, size)
        s.dirty = True
        self.covered["ftruncate"] += 1
        return ["ok"]

    @staticmethod
    def _resize(buf: bytearray, size: int) -> None:
        del buf[size:]
        buf.extend(b"\0" * (size - len(buf)))

    def truncate(self, pid: int, path: str, size: int) -> list[Any]:
        inode = self.paths.get(path)
        if inode is None:
            return [errno.ENOENT]
        s = self._live(inode, pid)
        if s is not None:
            self._resize(s.content, size)
            s.dirty = True
            self.covered["truncate of the process's own version"] += 1
            return ["ok"]
        if inode.committed is not None and len(inode.committed) == size:
            return ["ok"]
        content = bytearray(inode.committed or b"")
        self._resize(content, size)
        if not self._publish(inode, Session(content, True)):
            return [errno.EIO]
        self.covered["truncate by path publishes"] += 1
        return ["ok"]

    def read(self, idx: int) -> list[Any]:
        """Allowed results: bytes, or ESTALE."""
        h = self.handle(idx)
        assert h is not None
        s = self._live(h.inode, h.pid)
        if s is not None:
            self.covered["read of the process's own version"] += 1
            return [bytes(s.content)]
        if h.writable:  # its session failed: it reads the committed version again
            return [h.inode.committed or b"", errno.ESTALE, h.pinned or b""]
        allowed: list[Any] = [h.pinned or b""]
        current = h.inode.committed if h.inode.path is not None else None
        if current != h.pinned:
            self.covered["read of a version replaced since open"] += 1
            allowed.append(errno.ESTALE)
            if not h.returned and current is not None:
                allowed.append(current)
        return allowed

    def stat(self, pid: int, path: str) -> list[Any]:
        inode = self.paths.get(path)
        if inode is None:
            return [errno.ENOENT]
        s = self._live(inode, pid)
        return [len(s.content) if s is not None else len(inode.committed or b"")]

    def durable(self, idx: int, final: bool) -> list[Any]:
        """flush (close's first half) when ``final``, else fsync."""
        h = self.handle(idx)
        assert h is not None
        s = h.session
        if s is None:
            return ["ok"]
        if h.failed or s.failed:
            return [errno.EIO]
        if not s.dirty:
            return ["ok"]
        if self._publish(h.inode, s):
            return ["ok"]
        if final:
            s.failed = h.failed = True
        return [errno.EIO]

    def release(self, idx: int) -> None:
        h = self.handle(idx)
        assert h is not None
        del self.handles[idx % len(self.handles)]
        key = (h.inode.id, h.pid)
        if h.session is not None and not any(o.session is h.session for o in self.handles):
            if self.sessions.get(key) is h.session:
                del self.sessions[key]
        self._forget_unpublished(h.inode)

    def rename(self, pid: int, src: str, dst: str) -> list[Any]:
        inode = self.paths.get(src)
        if inode is None:
            return [errno.ENOENT]
        if src == dst:
            return ["ok"]
        target = self.paths.pop(dst, None)
        if target is not None:
            target.path = None
            target.committed = None
            self.covered["rename over a file"] += 1
        del self.paths[src]
        inode.path = dst
        self.paths[dst] = inode
        self.covered["rename"] += 1
        return ["ok"]

    def unlink(self, pid: int, path: str) -> list[Any]:
        inode = self.paths.pop(path, None)
        if inode is None:
            return [errno.ENOENT]
        inode.path = None
        inode.committed = None
        self.covered["unlink"] += 1
        return ["ok"]
