"""One process's pending version of one file: the write state machine.

ocifs gives each *process* that opens a file for writing its own copy-on-write version of it
(close-to-open consistency, as in AFS and NFS):

* the writing process sees its own writes at once, through every descriptor it has;
* every other process, on this mount and on others, sees the committed version until the
  writer's close (or fsync) publishes the whole new version atomically;
* a close publishes only that process's bytes, never another writer's unfinished ones; two
  processes rewriting one file each publish a whole version, and the later close wins
  (``index.json``: merged, see :mod:`ocifs.publish`).

The states and the only transitions allowed between them::

    CLEAN ──write/truncate──▶ DIRTY ──close/fsync──▶ PUBLISHING ──ok──▶ CLEAN
      │                        │  ▲                    │    │
      │                        │  └────fsync failed────┘    └──close failed──▶ FAILED
      │                        │                                                 │
      └──last release──▶ CLOSED ◀──last release (never published: discarded)─────┘

A FAILED session's bytes are never published: the close that failed returned its error, and
no later release, unmount or other process can publish them.
"""

from __future__ import annotations

import enum
import logging
import time

import trio

from ocifs.content import Content
from ocifs.tasks import TaskGroup
from ocifs.upload import Upload

log = logging.getLogger(__name__)

# A process: (thread group id, its start time in clock ticks). The start time makes a reused
# pid another owner, so a new process never inherits an old one's session or index.json base.
Owner = tuple[int, int]


class State(enum.Enum):
    CLEAN = "clean"  # nothing to publish: equal to its base (the last published version)
    DIRTY = "dirty"  # written since the last publish
    PUBLISHING = "publishing"  # a close or fsync is publishing it; writes wait
    FAILED = "failed"  # a close failed: these bytes are never published
    CLOSED = "closed"  # the last handle is gone; staging file and upload are gone too


ALLOWED: dict[State, frozenset[State]] = {
    State.CLEAN: frozenset({State.DIRTY, State.CLOSED}),
    State.DIRTY: frozenset({State.DIRTY, State.PUBLISHING, State.CLOSED}),
    State.PUBLISHING: frozenset({State.CLEAN, State.DIRTY, State.FAILED}),
    State.FAILED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A bug: code tried a transition the state machine does not allow."""


class WriteSession:
    """The pending version of ``node`` written by process ``owner``."""

    __slots__ = ("node", "owner", "slot", "content", "upload", "group", "state", "handles", "_settled", "started")

    def __init__(
        self, node: object, owner: Owner, slot: object, content: Content, upload: Upload, group: TaskGroup, dirty: bool
    ) -> None:
        self.node = node  # the namespace Node (typed loosely: namespace imports this module)
        self.owner = owner
        self.slot = slot  # its key in node.sessions: the owner, or (owner, handle) for index.json
        self.content = content
        self.upload = upload
        self.group = group  # owns the background part uploads
        self.state = State.DIRTY if dirty else State.CLEAN
        self.handles: set[int] = set()  # open file handles writing through this session
        self._settled = trio.Event()  # set whenever not PUBLISHING
        self._settled.set()
        self.started = time.monotonic()

    def __repr__(self) -> str:
        return f"<WriteSession {getattr(self.node, 'path', '?')} owner={self.owner} {self.state.value} size={self.content.size}>"

    # --- state --------------------------------------------------------------------------
    def to(self, new: State) -> None:
        if new not in ALLOWED[self.state]:
            raise InvalidTransition(f"{self!r}: {self.state.value} -> {new.value}")
        self.state = new
        if new is State.PUBLISHING:
            self._settled = trio.Event()
        else:
            self._settled.set()

    @property
    def dirty(self) -> bool:
        return self.state is State.DIRTY

    @property
    def live(self) -> bool:
        """Whether writes are accepted (not failed, not closed)."""
        return self.state in (State.CLEAN, State.DIRTY, State.PUBLISHING)

    async def settled(self) -> None:
        """Wait until no publish of this session is running."""
        await self._settled.wait()

    # --- writes -------------------------------------------------------------------------
    def write_nowait(self, offset: int, data: bytes | memoryview) -> bool:
        """Stage a write without awaiting; False if it needs the slow path (base chunks to
        fetch first, or a publish running)."""
        if self.state is State.PUBLISHING or not self.content.write_nowait(offset, data):
            return False
        self._wrote(offset, offset + len(data))
        return True

    def _wrote(self, offset: int, end: int) -> None:
        self.upload.note_write(offset, end)
        if self.state is State.CLEAN:
            self.to(State.DIRTY)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        await self.settled()
        await self.content.write(offset, data, self.upload.fetch)
        self._wrote(offset, offset + len(data))

    async def truncate(self, size: int) -> None:
        await self.settled()
        restart = self.upload.note_truncate(size)
        self.content.truncate(size)
        if restart:
            await self.upload.abort()  # the copyable prefix shrank: lay the upload out again
        if self.state is State.CLEAN:
            self.to(State.DIRTY)

    # --- the end ------------------------------------------------------------------------
    async def close(self) -> None:
        """Release everything (the last handle is gone). Unpublished bytes are dropped."""
        if self.state is State.CLOSED:
            return
        if self.state is State.DIRTY:
            log.warning("%s: %d bytes written by pid %d were never published (no successful close)",
                        getattr(self.node, "path", "?"), self.content.size, self.owner[0])
        self.to(State.CLOSED)
        with trio.CancelScope(shield=True):
            await self.upload.abort()
        self.group.close()
        self.content.close()
