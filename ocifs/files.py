"""What each file operation does to nodes, write sessions and S3. No pyfuse3 here.

The rules (README, "Consistency", and ``docs/SEMANTICS.md``):

* A process that opens a file for writing gets its own pending version of it
  (:class:`~ocifs.session.WriteSession`, copy-on-write over the committed object). It sees its
  own writes at once; everyone else sees the committed version until it is published.
* **close and fsync are the durability points.** A close or fsync that returned 0 published
  the whole version (its bytes are in S3). One that failed published nothing, and a failed
  close is final: nothing (a later release, the unmount, another process) publishes those
  bytes. A process's close publishes only its own bytes.
* A file never closed is never published (the unmount discards what is still open).
* ``truncate(path, N)`` with no pending version of the caller's is a publish of its own.
* An unlink or a rename takes the node's lock, so it is ordered with any publish in flight; the
  bytes of an unlinked file go nowhere.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable

import trio

from ocifs import errors, store
from ocifs.config import Config
from ocifs.content import Content, Version
from ocifs.layout import RESERVED_TOP, check_key, is_blob_path, is_index, join, parent_of
from ocifs.markers import Markers
from ocifs.namespace import Namespace, Node
from ocifs.publish import Publisher
from ocifs.reader import ReadState, Reader
from ocifs.session import Owner, State, WriteSession
from ocifs.store import ObjectStore
from ocifs.tasks import TaskGroup
from ocifs.upload import Upload

log = logging.getLogger(__name__)

# A writer's unchanged base of at most this many bytes is kept locally when its file is deleted.
KEEP_BASE = 64 * 1024 * 1024
# S3's largest object: no file grows past it (EFBIG, what write(2)/truncate(2) name for a
# file size the filesystem cannot hold).
MAX_FILE_SIZE = 5 * 1024**4


class Handle:
    """One open file description."""

    __slots__ = ("fh", "node", "owner", "writable", "session", "read", "failed")

    def __init__(self, fh: int, node: Node, owner: Owner, writable: bool, session: WriteSession | None, read: ReadState) -> None:
        self.fh = fh
        self.node = node
        self.owner = owner  # the process that opened it
        self.writable = writable
        self.session = session  # writes go here (writable handles only)
        self.read = read  # how it reads the committed version
        self.failed = False  # its close failed: it may not write again


class Files:
    def __init__(
        self,
        cfg: Config,
        s3: ObjectStore,
        ns: Namespace,
        reader: Reader,
        publisher: Publisher,
        markers: Markers,
        nursery: Callable[[], trio.Nursery],
    ) -> None:
        self.cfg = cfg
        self.s3 = s3
        self.ns = ns
        self.reader = reader
        self.publisher = publisher
        self.markers = markers
        self._nursery = nursery  # the mount's: every session's task group lives under it
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._slots = itertools.count()
        self._max_inflight = max(2, cfg.concurrency // 2)

    # --- what a process sees ------------------------------------------------------------------
    @staticmethod
    def own_session(node: Node, owner: Owner | None) -> WriteSession | None:
        """``owner``'s pending version of ``node``, if it has a live one."""
        s = node.sessions.get(owner) if owner is not None else None
        return s if s is not None and s.live else None

    def size_seen_by(self, node: Node, owner: Owner | None) -> int:
        s = self.own_session(node, owner)
        return s.content.size if s is not None else node.size

    def check_writable(self) -> None:
        if self.cfg.read_only:
            raise errors.ReadOnly("mounted read-only")
        if self.publisher.writes_denied:
            raise errors.AccessDenied("these credentials cannot write to the bucket")

    def check_new_name(self, parent: Node, name: str) -> str:
        """The path a new name in ``parent`` gets, if it may be created at all."""
        if not parent.path and name == RESERVED_TOP:
            raise errors.OcifsError(f"{name} is reserved for ocifs's own bookkeeping", err=errno.EPERM)
        path = join(parent.path, name)
        check_key(self.ns.key(path) + "/")
        return path

    # --- sessions -----------------------------------------------------------------------------
    async def _session(self, node: Node, owner: Owner, truncate: bool, created: bool = False) -> WriteSession:
        # index.json is rewritten in place by every OCI client: each open for writing gets a
        # version of its own, so no other open — not even another thread of the writing
        # process — ever reads it half-written. Other files: one version per process.
        slot: object = (owner, next(self._slots)) if is_index(node.path) else owner
        s = self.own_session(node, owner)
        if s is not None and slot == owner:
            if truncate:
                await s.truncate(0)
            return s
        base = None if truncate or created else node.version
        content = Content(self.cfg.staging_dir, self.cfg.chunk_size, base, self._label(node.path))
        try:
            group = await TaskGroup.open(self._nursery(), f"writes of {node.path}")
        except BaseException:
            content.close()
            raise
        upload = Upload(self.s3, content, self.reader.fetcher(content), self.cfg.part_size, self._max_inflight, group.start_soon)
        upload.streaming_enabled = self.publisher.stream_target(node) is not None
        # A new file must appear at close even if empty; an O_TRUNC of a non-empty file changed it.
        dirty = created or (truncate and node.size > 0)
        s = WriteSession(node, owner, slot, content, upload, group, dirty)
        node.sessions[slot] = s
        return s

    def _label(self, path: str) -> str:
        """What a staging file of ``path`` is, for the next mount if this one dies."""
        return f"s3://{self.cfg.bucket}/{self.ns.key(path)}"

    async def _publish(self, s: WriteSession, final: bool) -> None:
        """Publish ``s`` (close: ``final``; fsync: not). Errors reach the caller."""
        node = s.node
        assert isinstance(node, Node)
        # index.json: all closes of one index.json on this mount share one publish (group
        # commit, ocifs.publish), whose task takes the node lock, and keeps the other writers'
        # bases right before it replaces the object.
        group = is_index(node.path)
        async with contextlib.nullcontext() if group else node.lock:
            if s.state is not State.DIRTY:
                return  # published meanwhile (another descriptor of the same process)
            s.to(State.PUBLISHING)
            try:
                if group:
                    await self.publisher.commit_index(node, s, self._nursery(), self._keep_bases)
                else:
                    await self._keep_bases(node, skip=s)
                    await self.publisher.commit(node, s)
            except BaseException:
                # A failed close is final: these bytes are never published. A failed fsync
                # can be retried (by another fsync or the close).
                s.to(State.FAILED if final else State.DIRTY)
                raise
            s.to(State.CLEAN)

    async def _close_session(self, s: WriteSession) -> None:
        node = s.node
        assert isinstance(node, Node)
        if node.sessions.get(s.slot) is s:
            del node.sessions[s.slot]
        with trio.move_on_after(self.cfg.op_timeout):
            await s.close()
        self._forget_unpublished(node)

    def _forget_unpublished(self, node: Node) -> None:
        """A file created here but never published does not exist once nobody holds it."""
        if not node.committed and not node.sessions and node.opens <= 0 and not node.unlinked:
            self.ns.remove(node)
        else:
            self.ns.maybe_drop(node)

    # --- open / create ------------------------------------------------------------------------
    async def open(self, node: Node, flags: int, owner: Owner) -> Handle:
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if node.is_dir:
            raise errors.IsADirectory(node.path)
        if node.abandoned:
            # ESTALE: the kernel looks the name up again (and finds what S3 has), where reading
            # this inode would show an empty file that exists nowhere.
            raise errors.Stale(f"{node.path}: this file was never published; look it up again")
        if writable:
            self.check_writable()
        session: WriteSession | None = None
        seen: Version | None = None
        if writable:
            session = await self._session(node, owner, truncate=bool(flags & os.O_TRUNC))
        elif self.own_session(node, owner) is None:
            await self.ns.revalidate(node, need_meta=False)
            if is_index(node.path):  # it reads exactly the version recorded as its merge base
                seen = await self.publisher.read_index(node, owner)
        verify = node.path if is_blob_path(node.path) and not node.sessions else None
        return self._new_handle(node, owner, session, self.reader.new_state(seen or node.version, verify))

    def _new_handle(self, node: Node, owner: Owner, session: WriteSession | None, read: ReadState) -> Handle:
        h = Handle(self._next_fh, node, owner, session is not None, session, read)
        self._next_fh += 1
        if session is not None:
            session.handles.add(h.fh)
        self.handles[h.fh] = h
        node.opens += 1
        return h

    async def create(self, parent: Node, name: str, mode: int, flags: int, owner: Owner) -> Handle:
        self.check_writable()
        path = self.check_new_name(parent, name)
        # The kernel looked the name up just before: only this mount's own newer state can
        # contradict it, so no S3 round trip here.
        existing = self.ns.paths.get(path)
        if existing is not None and not existing.unlinked:
            if flags & os.O_EXCL:
                raise errors.Exists(path)
            if existing.is_dir:
                raise errors.IsADirectory(path)
            existing.lookups += 1
            return await self.open(existing, flags, owner)
        node = self.ns.create_node(path, is_dir=False)
        node.mode = stat.S_IFREG | stat.S_IMODE(mode)
        node.lookups += 1
        self.ns.note_added(node)
        try:
            session = await self._session(node, owner, truncate=False, created=True)
        except BaseException:
            node.lookups -= 1
            self._forget_unpublished(node)
            raise
        return self._new_handle(node, owner, session, self.reader.new_state(None))

    # --- data ---------------------------------------------------------------------------------
    def handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise errors.OcifsError(f"file handle {fh} is not open", err=errno.EBADF) from None

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self.handle(fh)
        node = h.node
        s = h.session if h.session is not None and h.session.live else self.own_session(node, h.owner)
        if s is not None:
            return await s.content.read(off, size, s.upload.fetch)
        try:
            return await self.reader.read(h.read, off, size, node.path)
        except (store.PreconditionFailed, store.NotFound):
            await self._repin(h)
            return await self.reader.read(h.read, off, size, node.path)

    async def _repin(self, h: Handle) -> None:
        """The version ``h`` reads is gone from S3. Switch to the current one if that cannot
        tear what the reader saw (nothing read yet, or a blob: same name, same bytes); else
        ESTALE (mountpoint-s3 does the same)."""
        node = h.node
        old = h.read.pin
        self.reader.cache.invalidate_key(old.key if old is not None else "")
        if node.unlinked:
            raise errors.Stale(f"{node.path}: deleted while open")
        try:
            await self.ns.revalidate(node, force=True)
        except errors.NotFound:
            raise errors.Stale(f"{node.path}: deleted while open") from None
        if node.version is None or (h.read.returned and not is_blob_path(node.path)):
            raise errors.Stale(f"{node.path}: replaced while open (read again after reopening)")
        h.read.pin = node.version

    def write_nowait(self, fh: int, off: int, data: bytes | memoryview) -> int | None:
        """Stage a write that needs no await and return its byte count, or None when it must
        take :meth:`write` (base chunks to fetch first, a publish running). Nothing here can
        wait, so the FUSE edge runs it without a deadline scope: oras writes 32 KiB at a time,
        32,768 writes per GiB, and a trio cancel scope for each cost a third of the FUSE
        thread's CPU."""
        h, s, data = self._writable(fh, off, data)
        if not s.write_nowait(off, data):
            return None
        self._wrote(h)
        return len(data)

    async def write(self, fh: int, off: int, data: bytes | memoryview) -> int:
        h, s, data = self._writable(fh, off, data)
        if not s.write_nowait(off, data):
            await s.write(off, data)
        self._wrote(h)
        await self.pump(fh)
        return len(data)

    def pump_due(self, fh: int) -> bool:
        """A full part of ``fh``'s pending version can be sent (see :meth:`pump`)."""
        s = self.handle(fh).session
        return s is not None and s.upload.ready()

    async def pump(self, fh: int) -> None:
        """Start the upload of every full part written so far (the writer waits here while
        too many parts are in flight)."""
        h = self.handle(fh)
        s = h.session
        if s is not None and s.upload.ready():
            target = self.publisher.stream_target(h.node)
            if target is not None:
                await s.upload.pump(*target)

    def _writable(self, fh: int, off: int, data: bytes | memoryview) -> tuple[Handle, WriteSession, bytes | memoryview]:
        """The handle and session a write goes to, and the part of ``data`` that fits."""
        h = self.handle(fh)
        s = h.session
        if s is None or not h.writable:
            raise errors.OcifsError("not open for writing", err=errno.EBADF)
        if h.failed or not s.live:
            raise errors.OcifsError(f"{h.node.path}: an earlier close failed; nothing more is accepted", err=errno.EIO)
        if off + len(data) > MAX_FILE_SIZE:
            if off >= MAX_FILE_SIZE:
                raise errors.OcifsError(f"{h.node.path}: a file ends at {MAX_FILE_SIZE} bytes (S3's largest object)", err=errno.EFBIG)
            data = data[: MAX_FILE_SIZE - off]  # a short write, as POSIX has it
        return h, s, data

    @staticmethod
    def _wrote(h: Handle) -> None:
        node = h.node
        node.mtime = time.time()
        node.explicit_mtime = False

    async def flush(self, fh: int) -> None:
        """close(2) of a descriptor: publish the handle's pending version."""
        h = self.handle(fh)
        await self._durable(h, final=True)

    async def fsync(self, fh: int) -> None:
        h = self.handle(fh)
        await self._durable(h, final=False)

    async def _durable(self, h: Handle, final: bool) -> None:
        s = h.session
        if s is None or s.state is State.CLOSED:
            return
        await s.settled()
        if s.state is State.FAILED or h.failed:
            raise errors.OcifsError(f"{h.node.path}: an earlier close failed; nothing was published", err=errno.EIO)
        if s.state is not State.DIRTY:
            return
        try:
            await self._publish(s, final)
        except BaseException:
            if final:
                h.failed = True
            raise

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.opens -= 1
        s = h.session
        if s is not None:
            s.handles.discard(fh)
            if not s.handles:
                await self._close_session(s)
                return
        self._forget_unpublished(node)

    async def truncate(self, node: Node, size: int, owner: Owner, fh: int | None) -> None:
        if size < 0:
            raise errors.InvalidName("negative length")
        if size > MAX_FILE_SIZE:
            raise errors.OcifsError(f"{node.path}: a file ends at {MAX_FILE_SIZE} bytes (S3's largest object)", err=errno.EFBIG)
        self.check_writable()
        if fh is not None:
            h = self.handle(fh)
            if h.session is not None:
                if h.failed or not h.session.live:
                    raise errors.OcifsError(f"{node.path}: an earlier close failed; nothing more is accepted", err=errno.EIO)
                await h.session.truncate(size)
                return
        s = self.own_session(node, owner)
        if s is not None:
            await s.truncate(size)  # published with the rest of that process's writes
            return
        if node.committed and node.size == size:
            return
        # truncate(path, N) from a process with nothing pending: a publish of its own. On
        # failure nothing was published and nothing is left to publish later.
        s = await self._session(node, owner, truncate=size == 0)
        try:
            await s.truncate(size)
            await self._publish(s, final=True)
        finally:
            await self._close_session(s)

    # --- names --------------------------------------------------------------------------------
    async def unlink(self, node: Node) -> None:
        self.check_writable()
        if node.is_dir:
            raise errors.IsADirectory(node.path)
        async with node.lock:  # ordered with any publish of it in flight
            v = node.version
            await self._keep_bases(node)
            if v is not None and v.key == self.ns.key(node.path):
                await self.s3.delete(v.key)
                self.reader.cache.invalidate_key(v.key)
            self.ns.remove(node)
        await self._orphaned(node)
        self.markers.emptied(parent_of(node.path))

    async def _keep_bases(self, node: Node, skip: WriteSession | None = None) -> None:
        """Other writers of a file this mount is about to replace or delete keep what their
        version is based on: the base comes into staging first (up to KEEP_BASE bytes; beyond
        that, their reads and publish of it fail with ESTALE/EIO)."""
        for s in node.sessions.values():
            if s is skip:
                continue
            c = s.content
            if c.base is not None and c.base_extent <= KEEP_BASE and c.needs_base(0, c.base_extent):
                await c.materialize(0, c.base_extent, s.upload.fetch)

    async def _orphaned(self, node: Node) -> None:
        """``node`` lost its name: what its writers still write can never be published, so
        their uploads stop now (not at their close)."""
        for s in list(node.sessions.values()):
            s.upload.streaming_enabled = False
            with trio.CancelScope(shield=True):
                await s.upload.abort()

    async def rename(self, src: Node, new_parent: Node, name: str, noreplace: bool, owner: Owner) -> None:
        self.check_writable()
        new_path = self.check_new_name(new_parent, name)
        if src.is_dir:
            # Directory renames would copy every object below; callers fall back on EXDEV.
            raise errors.OcifsError("directory rename is not supported", err=errno.EXDEV)
        # The kernel looked the target up already; a name it found is in our table.
        target = self.ns.paths.get(new_path)
        if target is not None:
            if noreplace:
                raise errors.Exists(new_path)
            if target.is_dir:
                raise errors.IsADirectory(new_path)
            if target is src:
                return
        old_path = src.path
        locks = sorted([n for n in (src, target) if n is not None], key=lambda n: n.inode)
        async with locks[0].lock:
            async with locks[1].lock if len(locks) > 1 else contextlib.nullcontext():
                before = src.version
                if target is not None:
                    await self._keep_bases(target)
                try:
                    await self.publisher.move(src, new_path, owner)
                except store.NotFound:
                    await self._check_gone(src)
                    raise
                replaced = target.version if target is not None else None
                if before is None and replaced is not None and replaced.key == self.ns.key(new_path):
                    # The new name's old object goes now (POSIX: replaced at once); the file
                    # moved there appears in S3 when its writer closes it.
                    await self.s3.delete(replaced.key)
                    self.reader.cache.invalidate_key(replaced.key)
                self.ns.move(src, new_path)
        for s in src.sessions.values():  # still open: they publish at the new name
            s.content.staging.label(self._label(new_path))
        if target is not None:
            await self._orphaned(target)
        if before is not None and src.version is not None and not is_index(new_path):
            self._moved(src, before)
        if parent_of(old_path) != parent_of(new_path):
            self.markers.emptied(parent_of(old_path))

    async def _check_gone(self, node: Node) -> None:
        """S3 said ``node``'s object is missing: if a HEAD agrees (another host deleted it
        while this mount still knew it), forget it and raise NotFound (ENOENT), as a lookup
        would have; otherwise return and the caller's error stands."""
        await self.ns.revalidate(node, force=True)

    def _moved(self, node: Node, old: Version) -> None:
        """The committed bytes of ``node`` now live at ``node.version`` (a rename or a metadata
        self-copy): open readers, and writers whose version is based on them, follow."""
        new = node.version
        for h in self.handles.values():
            if h.node is node and h.read.pin == old:
                h.read.pin = new
        for s in node.sessions.values():
            if s.content.base == old:
                s.content.base = new

    # --- metadata -----------------------------------------------------------------------------
    async def set_meta(self, node: Node, mode: int | None, mtime_ns: int | None) -> None:
        self.check_writable()
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
            if node.is_dir:
                self.ns.dir_modes[node.path] = node.mode
        if mtime_ns is not None:
            node.mtime = mtime_ns / 1e9
            node.explicit_mtime = True
        if node.is_dir or is_blob_path(node.path):
            return  # blobs carry no metadata (it would cost a copy of an immutable object)
        async with node.lock:
            v = node.version
            if v is None or v.key != self.ns.key(node.path):
                return  # nothing committed: the metadata goes with the first publish
            # Metadata of a committed object only changes by a server-side self-copy.
            try:
                etag = await self.s3.copy(v.key, v.key, node.meta(), v.etag)
            except store.NotFound:
                await self._check_gone(node)
                raise
            node.version = v._replace(etag=etag)
            node.fetched = time.monotonic()
        self._moved(node, v)  # same bytes: open readers and writers keep going

    # --- the end ------------------------------------------------------------------------------
    def publishing(self) -> int:
        return sum(1 for n in self.ns.nodes.values() for s in n.sessions.values() if s.state is State.PUBLISHING)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until no close or fsync is publishing (SIGTERM, unmount)."""
        with trio.move_on_after(timeout):
            while self.publishing():
                await trio.sleep(0.05)

    async def shutdown(self, timeout: float) -> None:
        """The FUSE loop ended: finish publishes in flight, drop what is still open."""
        await self.drain(timeout)
        for node in list(self.ns.nodes.values()):
            for s in list(node.sessions.values()):
                if s.state is State.DIRTY:
                    log.warning("%s: still open for writing at unmount: not published", node.path)
                await self._close_session(s)
        self.handles.clear()

