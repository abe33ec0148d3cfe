"""pyfuse3 Operations: the FUSE edge.

Each operation converts pyfuse3's arguments, calls :mod:`ocifs.files` (file semantics) or
:mod:`ocifs.namespace` (names and attributes), and returns pyfuse3's types. Here, and only here,
an exception becomes an errno: :func:`errno_for` picks it per operation (a precondition that
failed under a read is ``ESTALE``; any S3 failure while publishing is ``EIO``, never "no such
file"), every operation runs under the mount's deadline, and no exception — a timeout, a bug,
a stray cancellation — can leave an operation and end the FUSE loop.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import math
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from ocifs import errors, store
from ocifs.cache import ChunkCache
from ocifs.config import MiB, Config
from ocifs.content import Version
from ocifs.diskcache import DiskCache
from ocifs.files import Files
from ocifs.gcmarks import GcMarks
from ocifs.layout import basename, blob_digest, join, name_to_str, parent_of
from ocifs.markers import Markers
from ocifs.namespace import LAYOUT_FILES, Entry, Namespace, Node
from ocifs.publish import Publisher
from ocifs.reader import Reader
from ocifs.session import Owner
from ocifs.store import ObjectInfo, ObjectStore
from ocifs.tasks import TaskGroup

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Attributes of a committed blob never change: the kernel may keep them an hour. Whether the
# blob still exists is a separate question (the entry timeout, metadata_ttl).
IMMUTABLE_TIMEOUT = 3600.0
# st_blksize: callers size their buffers by it (Python's io does); 1 MiB means 1 MiB FUSE
# requests instead of 4 KiB ones for readers of direct-I/O files.
BLKSIZE = 1 * MiB
RENAME_NOREPLACE = 1
# A layout found by a lookup gets its small blobs (manifests, configs: what a client reads right
# after index.json, one round trip later) fetched along, when there are at most this many: a
# CI runner's layout holds one image or a few; a registry's repository may hold thousands of
# manifests, and which one a client wants is a guess.
SMALL_BLOB = 64 * 1024
SMALL_BLOBS_AT_MOST = 8

# Operations that publish (or copy) content: whatever S3 said, the caller hears EIO.
_PUBLISHING = frozenset({"flush", "fsync", "release", "setattr", "rename", "create"})
# What an S3 answer means, by operation: (default errno, errno while publishing).
_STORE_ERRNO: dict[type[store.StoreError], tuple[int, int]] = {
    store.NotFound: (errno.ENOENT, errno.EIO),
    store.NoSuchUpload: (errno.EIO, errno.EIO),
    store.PreconditionFailed: (errno.ESTALE, errno.EIO),
    store.Denied: (errno.EACCES, errno.EACCES),
    store.Unsupported: (errno.ENOTSUP, errno.EIO),
}
_QUIET = frozenset({errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def errno_for(op: str, exc: BaseException) -> int:
    """The errno operation ``op`` answers for ``exc`` (one table, one place)."""
    if isinstance(exc, errors.OcifsError):
        return exc.errno
    if isinstance(exc, store.StoreError):
        for kind, (default, publishing) in _STORE_ERRNO.items():
            if isinstance(exc, kind):
                return publishing if op in _PUBLISHING else default
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _leaf(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a group: one with an errno of its own if there is one."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    for kinds in ((errors.OcifsError, store.StoreError), (trio.TooSlowError,), (Exception,)):
        for e in leaves:
            if isinstance(e, kinds):
                return e
    return leaves[0]


def fuse_op(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a FUSE operation under the mount's deadline and turn every failure into one errno.

    A method named ``_<op>_rest`` is the part of ``<op>`` that may wait (its fast path ran
    without a scope) and takes that operation's errnos."""
    op = fn.__name__.removeprefix("_").removesuffix("_rest")

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self: Operations = args[0]  # type: ignore[assignment]
        try:
            with trio.fail_after(self.cfg.op_timeout):
                return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except BaseException as exc:
            raise self._fail(op, exc) from None

    return wrapper


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, cfg: Config, s3: ObjectStore) -> None:
        super().__init__()
        self.cfg = cfg
        self.s3 = s3
        self.ns = Namespace(cfg, s3)
        self.cache = ChunkCache(cfg.cache_size, cfg.chunk_size)
        self.disk = DiskCache.from_config(cfg)  # None unless --disk-cache
        self.reader = Reader(cfg, s3, self.cache, self.disk)
        self.markers = Markers(s3, self.ns)
        self.publisher = Publisher(cfg, s3, self.ns, self.reader, on_published=self.markers.filled)
        self.files = Files(cfg, s3, self.ns, self.reader, self.publisher, self.markers, self._get_nursery)
        self.uid = cfg.uid if cfg.uid is not None else os.getuid()
        self.gid = cfg.gid if cfg.gid is not None else os.getgid()
        self._dirs: dict[int, tuple[Node, list[tuple[str, Any]] | None, float]] = {}
        self._next_dir = 1 << 40  # directory handles never collide with file handles
        self.nursery: trio.Nursery | None = None
        self.stats: collections.Counter[str] = collections.Counter()  # FUSE requests (S3's are on the client)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the mount's services (read-ahead, directory markers) under ``nursery``."""
        self.nursery = nursery
        self.reader.group = await TaskGroup.open(nursery, "read-ahead")
        self.markers.group = await TaskGroup.open(nursery, "directory markers")
        self.ns.on_layout = self._layout_found
        if self.disk is not None:
            await self.disk.start(nursery)

    def _layout_found(self, path: str, entries: dict[str, Entry]) -> None:
        """A lookup just listed the OCI layout at ``path`` whole. While the client reads its
        oci-layout, fetch what it asks for next: index.json, oci-layout and the small blobs
        (manifests, configs) into the cache, and the gc marks views that its blob lookups
        check (a cold `oras pull` then waits on none of them)."""
        for name in LAYOUT_FILES:
            info = entries.get(name)
            if info is not None:
                self.reader.prefetch_whole(Version(self.ns.key(join(path, name)), info.etag, info.size))
        if self.disk is None:  # with --disk-cache, blobs come from disk (a GET would be wasted)
            for blob, info in self._small_blobs(path):
                self.reader.prefetch_whole(Version(self.ns.key(blob), info.etag, info.size))
        self._warm_layout(path)

    def _small_blobs(self, path: str) -> list[tuple[str, ObjectInfo]]:
        """The blobs of the layout at ``path`` that its listing shows at most SMALL_BLOB big,
        if there are at most SMALL_BLOBS_AT_MOST (else none). Fetched with index.json, the
        manifest `oras pull` reads next is in memory when it asks (a trace: the manifest's GET
        began only once index.json was read, 35 ms later through a 25 ms link)."""
        out = []
        blobs = join(path, "blobs")
        for alg, entry in (self.ns.listed_entries(blobs) or {}).items():
            if entry is None:  # a directory: blobs/<algorithm>
                d = join(blobs, alg)
                out += [(join(d, n), i) for n, i in (self.ns.listed_entries(d) or {}).items() if i is not None and 0 < i.size <= SMALL_BLOB]
        return [(p, i) for p, i in out if blob_digest(p) is not None] if len(out) <= SMALL_BLOBS_AT_MOST else []

    def _warm_layout(self, path: str) -> None:
        """Refresh, in the background, the gc marks views the blob lookups of the layout at
        ``path`` will check."""
        marks, group = self.ns.gc_marks, self.reader.group
        if marks is not None and group is not None and not group.closed:
            group.start_soon(self._warm_marks, marks, self.ns.dir_key(path))

    async def _warm_marks(self, marks: GcMarks, root: str) -> None:
        with trio.move_on_after(self.cfg.op_timeout):
            await marks.prefetch_for_layout(root)

    def _get_nursery(self) -> trio.Nursery:
        assert self.nursery is not None, "the nursery is set when the mount starts"
        return self.nursery

    # --- errors ---------------------------------------------------------------------------
    def _fail(self, op: str, exc: BaseException) -> BaseException:
        """The FUSEError for ``exc``; a real cancellation (the loop is ending) goes on."""
        if isinstance(exc, BaseExceptionGroup):
            exc = _leaf(exc)
        if isinstance(exc, trio.Cancelled):
            if trio.current_effective_deadline() == -math.inf:
                return exc  # the FUSE loop is shutting down: let it
            log.error("%s: a cancellation escaped its scope (a bug); answering EIO", op)
            return pyfuse3.FUSEError(errno.EIO)
        if isinstance(exc, trio.TooSlowError):
            log.error("%s: gave up after %.0f s (op_timeout)", op, self.cfg.op_timeout)
            return pyfuse3.FUSEError(errno.EIO)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return exc
        err = errno_for(op, exc)
        if isinstance(exc, (errors.OcifsError, store.StoreError, OSError)):
            level = logging.DEBUG if err in _QUIET else logging.WARNING
            log.log(level, "%s: %s (%s)", op, exc, errno.errorcode.get(err, err))
        else:
            log.error("%s: unexpected %s: %s", op, type(exc).__name__, exc, exc_info=exc)
        return pyfuse3.FUSEError(err)

    # --- who is asking --------------------------------------------------------------------
    def owner(self, ctx: pyfuse3.RequestContext | None) -> Owner:
        return owner_of(ctx.pid if ctx is not None else 0)

    def _viewer(self, node: Node, ctx: pyfuse3.RequestContext | None) -> Owner | None:
        """Who sees these attributes; only asked when some process is writing the node."""
        return self.owner(ctx) if node.sessions and ctx is not None and ctx.pid else None

    def attrs(self, node: Node, owner: Owner | None = None) -> pyfuse3.EntryAttributes:
        """Attributes as process ``owner`` sees them: its own pending version if it has one,
        else the committed one."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        e.st_mode = node.mode
        e.st_nlink = 2 if node.is_dir else 1
        e.st_uid = self.uid
        e.st_gid = self.gid
        size = self.files.size_seen_by(node, owner)
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        ns = int(node.mtime * 1e9)
        e.st_mtime_ns = e.st_ctime_ns = e.st_atime_ns = ns
        ttl = self.cfg.metadata_ttl
        if node.is_dir:
            e.attr_timeout = e.entry_timeout = ttl
        elif node.sessions:
            # Processes see different sizes while one writes: the kernel must ask each time.
            e.attr_timeout = e.entry_timeout = 0
        elif node.immutable:
            e.attr_timeout, e.entry_timeout = IMMUTABLE_TIMEOUT, ttl
        elif not node.meta_known:
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
        except (errors.NotFound, errors.InvalidName):
            # No such name (a name that is not UTF-8 is no S3 key, so nothing has it; creating
            # one is EINVAL). A negative entry the kernel may cache for the metadata TTL:
            # existence checks (oras stats every blob before pushing it) then cost one S3 round
            # trip, not many. This mount's own create/mkdir/rename replace it at once.
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.cfg.metadata_ttl
            return neg
        node.lookups += 1
        return self.attrs(node, self._viewer(node, ctx))

    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.ns.forget(inode, count)

    @fuse_op
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        if node.abandoned and node.opens <= 0:  # (an open descriptor still stats as it was)
            raise errors.Stale(f"{node.path}: this file was never published; look it up again")
        await self.ns.revalidate(node)
        return self.attrs(node, self._viewer(node, ctx))

    @fuse_op
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.ns.get(inode)
        owner = self.owner(ctx)
        # update_uid / update_gid: accepted and ignored (every file is the mount's --uid/--gid;
        # with allow_other the kernel refuses a chown by anyone but root first).
        if fields.update_mode or fields.update_mtime:
            await self.files.set_meta(
                node,
                attr.st_mode if fields.update_mode else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        if fields.update_size and not node.is_dir:
            await self.files.truncate(node, attr.st_size, owner, fh)
        return self.attrs(node, owner)

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
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = (node, None, 0.0)
        return fh

    @fuse_op
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node, entries, started = self._dirs[fh]
        if entries is None or start_id == 0:
            entries, started = await self.ns.list_dir(node)
            self._dirs[fh] = (node, entries, started)
        for i in range(start_id, len(entries)):
            name, entry = entries[i]
            child = entry if isinstance(entry, Node) else self.ns.node_for(join(node.path, name), entry, started)
            if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"), self.attrs(child), i + 1):
                self.ns.maybe_drop(child)  # the kernel did not take it: nobody refers to it
                break
            child.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @fuse_op
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.files.check_writable()
        parent = self.ns.get(parent_inode)
        path = self.files.check_new_name(parent, name_to_str(name))
        existing = self.ns.paths.get(path)
        if existing is not None and not existing.unlinked:  # the kernel's lookup said no; only we know better
            raise errors.Exists(path)
        self.markers.created(path)
        node = self.ns.create_node(path, is_dir=True)
        node.local_dir = True
        node.mode = self.ns.dir_modes[path] = stat.S_IFDIR | stat.S_IMODE(mode)
        self.ns.note_added(node)
        self.ns.note_empty_dir(path)
        node.lookups += 1
        return self.attrs(node)

    @fuse_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.files.check_writable()
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

    # --- not supported (docs/SEMANTICS.md lists them with these errnos) -------------------
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # POSIX: the filesystem has no hard links

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no symbolic links in an object store

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no fifos, sockets or device nodes

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # --- files ----------------------------------------------------------------------------
    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        h = self.files.handles[fh]
        node = h.node
        fi = pyfuse3.FileInfo(fh=fh)
        # The kernel's page cache is one per inode, shared by every process, and it applies
        # every size change (a truncate, another process's publish) to every reader. ocifs
        # promises each open the version it opened (or its writer's own version), so only
        # committed blobs, which never change, go through it (and keep it across opens);
        # everything else is direct I/O. Readers still get 1 MiB requests: st_blksize.
        fi.direct_io = h.writable or not node.immutable
        fi.keep_cache = not fi.direct_io
        return fi

    @fuse_op
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.ns.get(parent_inode)
        owner = self.owner(ctx)
        h = await self.files.create(parent, name_to_str(name), mode, flags, owner)
        if basename(h.node.path) == "oci-layout":
            self._warm_layout(parent.path)  # a new layout: its blob lookups come next
        return self._file_info(h.fh), self.attrs(h.node, owner)

    @fuse_op
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.ns.get(inode)
        h = await self.files.open(node, flags, self.owner(ctx))
        return self._file_info(h.fh)

    @fuse_op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.stats["fuse.reads"] += 1
        return await self.files.read(fh, off, size)  # type: ignore[return-value]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """A write that stages without awaiting (the common case) returns at once, outside any
        cancel scope: there is nothing for a deadline to bound, and a scope per 32 KiB write
        cost a third of the FUSE thread (``Files.write_nowait``). The rest runs under one."""
        self.stats["fuse.writes"] += 1
        try:
            n = self.files.write_nowait(fh, off, buf)
            if n is not None and not self.files.pump_due(fh):
                return n
        except BaseException as exc:
            raise self._fail("write", exc) from None
        return await self._write_rest(fh, off, buf, n)

    @fuse_op
    async def _write_rest(self, fh: int, off: int, buf: bytes, staged: int | None) -> int:
        if staged is None:
            return await self.files.write(fh, off, buf)
        await self.files.pump(fh)
        return staged

    @fuse_op
    async def flush(self, fh: int) -> None:
        await self.files.flush(fh)

    @fuse_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    @fuse_op
    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    @fuse_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = await self._lookup(parent_inode, name)
        await self.files.unlink(node)

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
        if flags & ~RENAME_NOREPLACE:
            raise errors.OcifsError("RENAME_EXCHANGE/WHITEOUT are not supported", err=errno.EINVAL)
        src = await self._lookup(parent_inode_old, name_old)
        new_parent = self.ns.get(parent_inode_new)
        await self.files.rename(src, new_parent, name_to_str(name_new), bool(flags & RENAME_NOREPLACE), self.owner(ctx))

    # --- lifecycle ------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """The FUSE loop ended: finish publishes in flight (bounded), drop unclosed writes,
        settle directory markers."""
        await self.files.shutdown(self.cfg.op_timeout)
        await self.markers.settle(timeout=min(60.0, self.cfg.op_timeout))
        if self.disk is not None:
            await self.disk.aclose(timeout=min(60.0, self.cfg.op_timeout))

    def counters(self) -> dict[str, float]:
        """Everything `ocifs stats` shows (see metrics.render for the names)."""
        out: dict[str, float] = dict(self.s3.stats)
        out.update(self.stats)
        out.update(self.publisher.stats)
        out["cache.hits"] = self.cache.hits
        out["cache.misses"] = self.cache.misses
        out["cache.bytes"] = self.cache.current_bytes
        out["open.files"] = len(self.files.handles)
        out["inodes"] = len(self.ns.nodes)
        out["uploads.active"] = sum(1 for n in self.ns.nodes.values() for s in n.sessions.values() if s.dirty)
        out["readahead.window_bytes"] = max((h.read.readahead.window for h in self.files.handles.values()), default=0)
        if self.disk is not None:
            out.update(self.disk.counters())
        return out


# --- processes ----------------------------------------------------------------------------
def owner_of(pid: int) -> Owner:
    """(thread group id, start time) of the process behind a request (FUSE reports the thread
    id). The start time tells a reused pid apart; (pid, 0) if /proc cannot say."""
    if not pid:
        return (0, 0)
    tgid = pid
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    tgid = int(line.split()[1])
                    break
        with open(f"/proc/{tgid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (tgid, int(fields[19]))  # field 22 of stat(5): starttime
    except (OSError, ValueError, IndexError):
        return (tgid, 0)

