"""pyfuse3 Operations: the FUSE boundary.

Thin on purpose: each operation resolves nodes in :mod:`ocifs.namespace`, moves bytes with
:mod:`ocifs.cache` / :mod:`ocifs.upload`, and lets :func:`fuse_op` turn every exception into one
errno, in one place, under one deadline.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import pyfuse3
import trio

from ocifs import errors, store
from ocifs.cache import ChunkCache
from ocifs.config import MiB, Config
from ocifs.layout import ingest_target, is_blob_path, is_index, join, name_to_str, parent_of
from ocifs.markers import Markers
from ocifs.namespace import Namespace, Node, uid_gid
from ocifs.prefetch import ReadAhead
from ocifs.publish import Publisher
from ocifs.s3 import S3
from ocifs.upload import WriteSession

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

IMMUTABLE_TIMEOUT = 3600.0
# st_blksize: callers size their buffers by it (Python's io does); 1 MiB means 1 MiB FUSE
# requests instead of 4 KiB ones for readers of direct-I/O files.
BLKSIZE = 1 * MiB
RENAME_NOREPLACE = 1


def fuse_op(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a FUSE operation under the mount's deadline and map its errors to one errno."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self: Operations = args[0]  # type: ignore[assignment]
        try:
            try:
                with trio.fail_after(self.cfg.op_timeout):
                    return await fn(*args, **kwargs)
            except BaseExceptionGroup as group:  # parallel requests inside a nursery
                raise first_leaf(group) from None
        except pyfuse3.FUSEError:
            raise
        except store.StoreError as exc:
            err = _STORE_ERRNO.get(type(exc), errno.EIO)
            log.warning("%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(err, err))
            raise pyfuse3.FUSEError(err) from None
        except errors.OcifsError as exc:
            level = logging.DEBUG if exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY) else logging.WARNING
            log.log(level, "%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(exc.errno, exc.errno))
            raise pyfuse3.FUSEError(exc.errno) from None
        except trio.TooSlowError:
            log.error("%s: gave up after %.0f s (op_timeout)", fn.__name__, self.cfg.op_timeout)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s: unexpected error", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


_STORE_ERRNO = {
    store.NotFound: errno.ENOENT,
    store.Denied: errno.EACCES,
    store.PreconditionFailed: errno.ESTALE,
    store.Unsupported: errno.ENOTSUP,
}


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a group: an OcifsError if there is one (it has the errno)."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    for e in leaves:
        if isinstance(e, (errors.OcifsError, store.StoreError)):
            return e
    for e in leaves:
        if not isinstance(e, trio.Cancelled):
            return e
    return leaves[0]


class Handle:
    """One open file: which version it reads and how it reads ahead."""

    __slots__ = ("node", "writer", "key", "etag", "size", "readahead", "pid", "session", "verify", "corrupt")

    def __init__(self, node: Node, writer: bool, key: str, readahead: ReadAhead, pid: int | None) -> None:
        self.node = node
        self.writer = writer
        self.pid = pid  # the opening process (thread group), for index.json bases
        # index.json rewritten with O_TRUNC: this handle's own staging, published (merged) at
        # close, so concurrent rewriters never mix their bytes.
        self.session: WriteSession | None = None
        self.verify: "hashlib._Hash | None" = None  # --verify-reads: sequential hash of a blob
        self.corrupt = False  # --verify-reads found the blob's content wrong: every read fails
        # The committed version this handle reads when it does not read the staging copy.
        self.key = key
        self.etag = node.etag
        self.size = node.size
        self.readahead = readahead


class DirHandle:
    __slots__ = ("node", "entries")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.entries: list[tuple[str, Node]] | None = None


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, cfg: Config, s3: S3) -> None:
        super().__init__()
        self.cfg = cfg
        self.s3 = s3
        self.ns = Namespace(cfg, s3)
        self.cache = ChunkCache(cfg.cache_size, cfg.chunk_size)
        self.markers = Markers(s3, self.ns, self._get_nursery)
        self.publisher = Publisher(cfg, s3, self.ns, self.cache, on_published=self.markers.filled)
        self.uid, self.gid = uid_gid()
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._locks: dict[int, trio.Lock] = {}
        self._tgids: dict[int, int] = {}
        self._verify_pos: dict[int, int] = {}
        # (inode, process) -> that process's private rewrite of an index.json
        self._own: dict[tuple[int, int], WriteSession] = {}
        self.nursery: trio.Nursery | None = None
        # Read-ahead never plans more than half the cache per file, or it evicts itself.
        self._max_window = max(cfg.chunk_size, min(cfg.max_readahead, cfg.cache_size // 2))

    # --- plumbing -------------------------------------------------------------------------
    def _get_nursery(self) -> trio.Nursery:
        assert self.nursery is not None, "the nursery is set when the mount starts"
        return self.nursery

    def _lock(self, node: Node) -> trio.Lock:
        lock = self._locks.get(node.inode)
        if lock is None:
            lock = self._locks[node.inode] = trio.Lock()
        return lock

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _tgid(self, ctx: pyfuse3.RequestContext | None) -> int | None:
        """The process (thread group) behind a request: FUSE reports the thread id."""
        if ctx is None or not ctx.pid:
            return None
        pid = ctx.pid
        tgid = self._tgids.get(pid)
        if tgid is None:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("Tgid:"):
                            tgid = int(line.split()[1])
                            break
            except OSError:
                pass
            tgid = tgid or pid
            if len(self._tgids) > 4096:
                self._tgids.clear()
            self._tgids[pid] = tgid
        return tgid

    def _check_writable(self) -> None:
        if self.cfg.read_only:
            raise errors.ReadOnly("mounted read-only")
        if self.publisher.writes_denied:
            raise errors.AccessDenied("these credentials cannot write to the bucket")

    def attrs(self, node: Node, pid: int | None = None) -> pyfuse3.EntryAttributes:
        """Attributes as process ``pid`` sees them: a process rewriting a file (O_TRUNC) sees
        its new content; everyone else sees the committed version until the commit."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        e.st_mode = node.mode
        e.st_nlink = 2 if node.is_dir else 1
        e.st_uid = self.uid
        e.st_gid = self.gid
        size = node.size
        session = node.session
        if session is not None and (not session.private or (pid is not None and session.owner == pid)):
            size = session.size
        elif pid is not None and (node.inode, pid) in self._own:
            session = self._own[(node.inode, pid)]
            size = session.size
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        ns = int(node.mtime * 1e9)
        e.st_mtime_ns = e.st_ctime_ns = e.st_atime_ns = ns
        ttl = self.cfg.metadata_ttl
        if node.is_dir:
            e.attr_timeout = e.entry_timeout = ttl
        elif node.immutable:
            e.attr_timeout = e.entry_timeout = IMMUTABLE_TIMEOUT
        elif session is not None or not node.meta_known:
            e.attr_timeout, e.entry_timeout = 0, ttl
        else:
            e.attr_timeout = e.entry_timeout = ttl
        return e

    async def _lookup(self, parent_inode: int, name: bytes) -> Node:
        parent = self.ns.get(parent_inode)
        return await self.ns.lookup(parent, name_to_str(name))

    # --- metadata -------------------------------------------------------------------------
    @fuse_op
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            node = await self._lookup(parent_inode, name)
        except errors.NotFound:
            # A negative entry the kernel may cache for the metadata TTL: existence checks
            # (oras stats every blob before pushing it) then cost one S3 round trip, not many.
            # This mount's own create/mkdir/rename replace it at once.
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.cfg.metadata_ttl
            return neg
        # A node known only from a listing lacks mode/mtime: its attributes go out with
        # attr_timeout 0, so a stat() asks getattr (one HEAD) and a plain open() asks nothing.
        node.lookups += 1
        return self.attrs(node, self._tgid(ctx))

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.ns.forget(inode, count)
            if inode not in self.ns.nodes:
                self._locks.pop(inode, None)

    @fuse_op
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        await self.ns.revalidate(node)
        return self.attrs(node, self._tgid(ctx))

    @fuse_op
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        meta_changed = False
        if fields.update_mode:
            self._check_writable()
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            meta_changed = True
        if fields.update_mtime:
            self._check_writable()
            node.mtime = attr.st_mtime_ns / 1e9
            node.explicit_mtime = True
            meta_changed = True
        # update_uid / update_gid: accepted and ignored (ownership is the mounting user's).
        if node.is_dir:
            return self.attrs(node)
        if fields.update_size:
            self._check_writable()
            async with self._lock(node):
                session = await self._session_for_write(node, attr.st_size == 0, self._tgid(ctx))
                session.truncate(attr.st_size)
            node.mtime = time.time()
            if node.opens == 0:  # truncate(2) by path: publish now
                await self._commit(node, node.session)
                await self._drop_session(node)
            return self.attrs(node, self._tgid(ctx))
        if meta_changed and node.committed and not is_blob_path(node.path) and (node.session is None or not node.session.dirty):
            # Metadata of a committed object only changes by a (server-side) self-copy.
            node.etag = await self.s3.copy(self.ns.key(node.path), self.ns.key(node.path), node.meta())
        return self.attrs(node, self._tgid(ctx))

    @fuse_op
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 2**40 // 4096  # object storage: 1 PiB "free"
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = 255
        return s

    # --- directories ----------------------------------------------------------------------
    @fuse_op
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.ns.get(inode)
        if not node.is_dir:
            raise errors.NotADirectory(node.path)
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(node)
        return fh

    @fuse_op
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs[fh]
        if d.entries is None or start_id == 0:
            d.entries = await self.ns.list_dir(d.node)
        for i in range(start_id, len(d.entries)):
            name, node = d.entries[i]
            if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"), self.attrs(node), i + 1):
                break
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @fuse_op
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable()
        parent = self.ns.get(parent_inode)
        path = join(parent.path, name_to_str(name))
        if path in self.ns.paths:  # the kernel's lookup just said no; only we know better
            raise errors.Exists(path)
        self.markers.created(path)
        node = self.ns.create_node(path, is_dir=True)
        node.local_dir = True
        node.mode = stat.S_IFDIR | stat.S_IMODE(mode)
        self.ns.note_added(node)
        self.ns.note_empty_dir(path)
        node.lookups += 1
        return self.attrs(node)

    @fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        node = await self._lookup(parent_inode, name)
        if not node.is_dir:
            raise errors.NotADirectory(node.path)
        if self.ns.children_pending(node.path):
            raise errors.NotEmpty(node.path)
        marker = self.ns.dir_key(node.path)
        page = await self.s3.list_page(marker, delimiter=None, max_keys=2)
        if page.prefixes or any(o.key != marker for o in page.objects):
            raise errors.NotEmpty(node.path)
        await self.markers.removed(node.path)
        self.ns.remove(node)
        self.markers.emptied(parent_of(node.path))

    # --- unsupported ----------------------------------------------------------------------
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # --- files ----------------------------------------------------------------------------
    @fuse_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable()
        parent = self.ns.get(parent_inode)
        path = join(parent.path, name_to_str(name))
        # The kernel looked the name up just before calling create: only this mount's own
        # newer state can contradict it, so no S3 round trip here.
        existing = self.ns.paths.get(path)
        if existing is not None and existing.unlinked:
            existing = None
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.Exists(path)
            if existing.is_dir:
                raise errors.IsADirectory(path)
            # Created by another mount since the kernel looked: open it like O_CREAT|O_TRUNC.
            existing.lookups += 1
            fi = await self._open(existing, flags | os.O_TRUNC, ctx)
            return fi, self.attrs(existing, self._tgid(ctx))
        node = self.ns.create_node(path, is_dir=False)
        node.mode = stat.S_IFREG | stat.S_IMODE(mode)
        node.committed = False
        node.meta_known = True
        if not is_index(path):  # index.json gets a per-handle session in _open
            node.session = self._new_session(node, size=0, private=False)
            target = ingest_target(path) if self.cfg.zero_copy else None
            if target is not None:
                # Zero-copy: stream straight to the blob key the rename will give it.
                node.session.target = node.session.key = self.ns.key(target)
        node.lookups += 1
        self.ns.note_added(node)
        fi = await self._open(node, flags | (os.O_TRUNC if is_index(path) else 0), ctx)
        return fi, self.attrs(node, self._tgid(ctx))

    @fuse_op
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.ns.get(inode)
        if node.is_dir:
            raise errors.IsADirectory(node.path)
        return await self._open(node, flags, ctx)

    async def _open(self, node: Node, flags: int, ctx: pyfuse3.RequestContext | None) -> pyfuse3.FileInfo:
        writer = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if writer:
            self._check_writable()
        pid = self._tgid(ctx)
        own: WriteSession | None = None
        if writer and flags & os.O_TRUNC and is_index(node.path):
            own = self._new_session(node, 0, private=True)
            own.owner = pid
            if pid is not None:
                self._own[(node.inode, pid)] = own
        elif writer and flags & os.O_TRUNC:
            async with self._lock(node):
                session = await self._session_for_write(node, True, pid)
                session.truncate(0)
            node.mtime = time.time()
        elif node.session is None:
            await self.ns.revalidate(node, need_meta=False)
            if is_index(node.path) and node.committed and not writer:
                # Remember what this process read: the base of its next rewrite.
                for attempt in range(3):
                    version, etag = node.version, node.etag
                    try:
                        content = await self._read_version(self.ns.key(node.path), etag, node.size)
                        break
                    except store.PreconditionFailed:  # replaced since our HEAD: look again
                        if attempt == 2:
                            raise
                        await self.ns.revalidate(node, force=True)
                self.publisher.record_index_read(pid, node, version, etag, content)
        ra = ReadAhead(self.cfg.chunk_size, self.cfg.chunk_size, self._max_window)
        handle = Handle(node, writer, self.ns.key(node.path), ra, pid)
        handle.session = own
        if self.cfg.verify_reads and is_blob_path(node.path) and node.session is None:
            handle.verify = hashlib.new(node.path.rsplit("/", 2)[-2])
        fh = self._new_fh()
        self._handles[fh] = handle
        node.opens += 1
        fi = pyfuse3.FileInfo(fh=fh)
        # index.json (rewritten in place by every OCI client), and any file opened while it is
        # being rewritten, bypass the kernel page cache: reads then always see a whole version
        # (the kernel would clip them to the writer's size). Other files use the page cache,
        # dropped at open unless they are immutable blobs.
        rewriting = node.session is not None and node.session.private
        fi.direct_io = is_index(node.path) or rewriting
        fi.keep_cache = node.immutable
        return fi

    def _new_session(self, node: Node, size: int, private: bool) -> WriteSession:
        assert self.nursery is not None
        return WriteSession(
            self.s3,
            self.nursery,
            self.cfg.staging_dir,
            self.ns.key(node.path),
            size,
            self.cfg.part_size,
            max_inflight=max(2, self.cfg.concurrency // 2),
            private=private,
        )

    async def _session_for_write(self, node: Node, truncate: bool, pid: int | None = None) -> WriteSession:
        """The node's write session, created on first write (call with the node lock held).

        Rewriting a committed file without truncating it first copies its content into the
        staging file (append on reopen, writes at offsets).
        """
        if node.session is not None:
            node.session.dirty = True
            return node.session
        if truncate:
            session = self._new_session(node, 0, private=node.committed and node.size > 0)
            session.owner = pid
        else:
            session = self._new_session(node, 0, private=False)
            if node.committed and node.size > 0:
                try:
                    await self._load_into(node, session)
                except BaseException:
                    session.close()
                    raise
        node.session = session
        return session

    async def _load_into(self, node: Node, session: WriteSession) -> None:
        key, etag, size = self.ns.key(node.path), node.etag, node.size
        cs = self.cfg.chunk_size

        async def one(idx: int) -> None:
            data = await self._chunk(key, etag, size, idx)
            session.staging.pwrite(data, idx * cs)

        async with trio.open_nursery() as nursery:
            for idx in range(-(-size // cs)):
                nursery.start_soon(one, idx)
        session.size = size

    async def _chunk(self, key: str, etag: str, size: int, idx: int) -> bytes:
        async def fetch(start: int, end: int) -> bytes:
            return await self.s3.get_range(key, start, end, etag or None)

        return await self.cache.get((key, etag, idx), size, fetch)

    async def _read_version(self, key: str, etag: str, size: int) -> bytes:
        cs = self.cfg.chunk_size
        return b"".join([await self._chunk(key, etag, size, i) for i in range(-(-size // cs))])

    @fuse_op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.s3.stats["fuse.reads"] += 1
        h = self._handles[fh]
        node = h.node
        session = h.session or node.session
        if session is not None and (h.session is not None or h.writer or not session.private):
            n = max(0, min(size, session.size - off))
            return session.staging.pread(n, off) if n else b""
        if h.corrupt:
            raise errors.RemoteError(f"{h.key}: content does not match its digest")
        try:
            data = await self._read_committed(h, off, size)
        except store.PreconditionFailed:
            if is_blob_path(node.path) or h.readahead.next_offset not in (None, off):
                raise  # mid-file: the version this handle was reading is gone
            # Replaced by another writer before we read anything: read the new version.
            await self.ns.revalidate(node, force=True)
            h.etag, h.size = node.etag, node.size
            data = await self._read_committed(h, off, size)
        if h.verify is not None:
            self._verify_read(h, off, data)
        return data

    def _verify_read(self, h: Handle, off: int, data: bytes) -> None:
        """--verify-reads: hash a blob read front to back; a mismatch at EOF is EIO."""
        assert h.verify is not None
        pos = self._verify_pos.get(id(h), 0)
        if off != pos:
            h.verify = None  # not a front-to-back reader: nothing to check
            self._verify_pos.pop(id(h), None)
            return
        h.verify.update(data)
        pos += len(data)
        self._verify_pos[id(h)] = pos
        if pos >= h.size:
            want = h.node.path.rsplit("/", 1)[-1]
            got = h.verify.hexdigest()
            h.verify = None
            self._verify_pos.pop(id(h), None)
            if got != want:
                h.corrupt = True  # the kernel retries failed read-ahead: keep failing
                log.error("blob %s read from S3 hashes to %s: corrupt object", h.key, got)
                raise errors.RemoteError(f"{h.key}: content does not match its digest")

    async def _read_committed(self, h: Handle, off: int, size: int) -> bytes:
        end = min(off + size, h.size)
        if off >= end:
            return b""
        cs = self.cfg.chunk_size
        for idx in h.readahead.on_read(off, size, h.size):
            ck = (h.key, h.etag, idx)
            if not self.cache.is_present_or_pending(ck):
                assert self.nursery is not None
                self.nursery.start_soon(self._prefetch, h.key, h.etag, h.size, idx)
        out = []
        for idx in range(off // cs, (end - 1) // cs + 1):
            data = await self._chunk(h.key, h.etag, h.size, idx)
            base = idx * cs
            # A memoryview slice: pyfuse3 replies from the buffer, no copy of the bytes.
            out.append(memoryview(data)[max(off, base) - base : end - base])
        return out[0] if len(out) == 1 else b"".join(out)

    async def _prefetch(self, key: str, etag: str, size: int, idx: int) -> None:
        async def fetch(start: int, end: int) -> bytes:
            return await self.s3.get_range(key, start, end, etag or None)

        with trio.move_on_after(self.cfg.op_timeout):
            await self.cache.prefetch((key, etag, idx), size, fetch)

    @fuse_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.s3.stats["fuse.writes"] += 1
        h = self._handles[fh]
        node = h.node
        self._check_writable()
        if h.session is not None:
            await h.session.write(off, buf, node.meta())
            return len(buf)
        lock = self._lock(node)
        session = node.session
        if session is not None and not lock.locked():
            # Fast path, no yield unless a part is ready to go (then under the lock).
            if session.write_nowait(off, buf):
                async with lock:
                    await session.dispatch(node.meta())
            node.mtime = time.time()
            node.explicit_mtime = False
            return len(buf)
        async with lock:
            session = await self._session_for_write(node, truncate=False)
            await session.write(off, buf, node.meta())
        node.mtime = time.time()
        node.explicit_mtime = False
        return len(buf)

    @fuse_op
    async def flush(self, fh: int) -> None:
        h = self._handles[fh]
        await self._commit(h.node, h.session or h.node.session, h.pid)

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles[fh]
        await self._commit(h.node, h.session or h.node.session, h.pid, durable=True)

    async def _commit(self, node: Node, session: WriteSession | None, pid: int | None = None, durable: bool = False) -> None:
        """Publish pending writes (close, fsync): errors reach the caller."""
        if session is None or node.unlinked or not (session.dirty and (durable or not session.sealed)):
            return
        async with self._lock(node):
            if node.unlinked or not session.dirty or (session.sealed and not durable):
                return
            await self.publisher.commit(node, session, pid, durable)

    @fuse_op
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh)
        self._verify_pos.pop(id(h), None)
        node = h.node
        try:
            if h.session is not None:
                if h.pid is not None and self._own.get((node.inode, h.pid)) is h.session:
                    del self._own[(node.inode, h.pid)]
                try:
                    await self._commit(node, h.session, h.pid)
                except (errors.OcifsError, store.StoreError) as exc:
                    log.error("discarding unpublished rewrite of %s: %s", node.path, exc)
                with trio.CancelScope(shield=True):
                    await h.session.discard()
            session = node.session
            if node.opens <= 1 and session is not None:
                if session.dirty and not node.unlinked:
                    try:
                        await self._commit(node, session, h.pid)
                    except (errors.OcifsError, store.StoreError) as exc:
                        log.error("discarding unpublished writes to %s: %s", node.path, exc)
                if session.dirty and session.sealed and not node.unlinked:
                    log.debug("%s sealed; waiting for its rename", node.path)  # zero-copy: parked
                else:
                    await self._drop_session(node)
                    if not node.committed and not node.unlinked:
                        self.ns.remove(node)  # never published: it does not exist
        finally:
            self.ns.release_open(node)

    async def _drop_session(self, node: Node) -> None:
        session, node.session = node.session, None
        if session is not None:
            with trio.CancelScope(shield=True):
                await session.discard()

    @fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        node = await self._lookup(parent_inode, name)
        if node.is_dir:
            raise errors.IsADirectory(node.path)
        key = self.ns.key(node.path)
        if node.committed:
            await self.s3.delete(key)
            self.cache.invalidate_key(key)
        self.ns.remove(node)
        if node.session is not None and node.opens == 0:
            await self._drop_session(node)
        self.markers.emptied(parent_of(node.path))

    @fuse_op
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_writable()
        if flags & ~RENAME_NOREPLACE:
            raise errors.Unsupported("RENAME_EXCHANGE/WHITEOUT are not supported")
        src = await self._lookup(parent_inode_old, name_old)
        new_parent = self.ns.get(parent_inode_new)
        new_path = join(new_parent.path, name_to_str(name_new))
        if src.is_dir:
            # Directory renames would copy every object below; callers fall back on EXDEV.
            raise errors.OcifsError("directory rename is not supported", err=errno.EXDEV)
        # The kernel looked the target up already; a name it found is in our table.
        target = self.ns.paths.get(new_path)
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise errors.Exists(new_path)
            if target.is_dir:
                raise errors.IsADirectory(new_path)
            if target is src:
                return
        async with self._lock(src):
            await self.publisher.move(src, new_path, self._tgid(ctx))
        if src.session is not None and src.opens == 0 and not src.session.dirty:
            await self._drop_session(src)
        if target is not None and target.session is not None and target.opens == 0:
            await self._drop_session(target)
        old_parent = parent_of(src.path)
        self.ns.move(src, new_path)
        if old_parent != parent_of(new_path):
            self.markers.emptied(old_parent)

    # --- lifecycle ------------------------------------------------------------------------
    async def flush_all(self) -> None:
        """Publish every pending write (unmount, SIGTERM)."""
        for node in list(self.ns.nodes.values()):
            if node.session is not None:
                try:
                    await self._commit(node, node.session, durable=True)
                except (errors.OcifsError, store.StoreError) as exc:
                    log.error("could not publish %s at unmount: %s", node.path, exc)
                await self._drop_session(node)
        await self.markers.settle()

    def counters(self) -> dict[str, float]:
        """Everything `ocifs stats` shows (see metrics.render for the names)."""
        out: dict[str, float] = dict(self.s3.stats)
        out["cache.hits"] = self.cache.hits
        out["cache.misses"] = self.cache.misses
        out["cache.bytes"] = self.cache.current_bytes
        out["open.files"] = len(self._handles)
        out["inodes"] = len(self.ns.nodes)
        out["uploads.active"] = sum(1 for n in self.ns.nodes.values() if n.session is not None and n.session.dirty)
        out["readahead.window_bytes"] = max((h.readahead.window for h in self._handles.values()), default=0)
        return out

