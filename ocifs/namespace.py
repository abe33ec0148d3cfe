"""Paths, inodes and attributes: how the bucket's keys look as a directory tree.

A file is an object ``<prefix><path>``. A directory is a key prefix ``<prefix><path>/``; an
empty directory persists as a zero-byte marker object ``<prefix><path>/`` (the convention of
s3fs, goofys and the S3 console). Attributes come from HEAD (exact: mode and mtime from user
metadata) or from a listing (size and LastModified only; marked ``meta_known=False`` so the
next getattr asks HEAD once).

A node's ``version`` is what S3 holds for it, as far as this mount knows: updated by this
mount's own publishes at once, and by HEAD/LIST answers after ``metadata_ttl``. Pending writes
are not here: they are :class:`~ocifs.session.WriteSession` objects, one per writing process.
Blobs (``blobs/<alg>/<hex>``) never change, so their attributes are never refetched; whether
they still *exist* is checked after ``metadata_ttl`` like anything else (another host's
``ocifs gc`` may delete them, and a client that stats a blob before pushing must hear so).
"""

from __future__ import annotations

import collections
import logging
import stat
import time
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import cachetools
import trio

from ocifs import errors, store
from ocifs.config import Config
from ocifs.content import Version
from ocifs.gcmarks import GcMarks
from ocifs.layout import basename, hidden_reason, is_blob_path, join, parent_of
from ocifs.store import ListPage, ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from ocifs.session import WriteSession

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Names that are files in every OCI image layout.
LAYOUT_FILES = frozenset({"index.json", "oci-layout"})
# Directory listings kept (for metadata_ttl), bounded by their total number of entries.
MAX_LISTED_ENTRIES = 200_000
# A name S3 just said is missing stays missing for this long without asking again: the kernel
# looks a name up once more right after a stat found nothing when a mkdir or an O_EXCL create
# follows (its negative entry does not count for those), and that second round trip was a
# quarter of a small `oras push` into a new repository. Other mounts' creates are seen
# --metadata-ttl late anyway (the kernel's own negative entries).
NEGATIVE_REUSE = 0.1
# Keys a probe's LIST asks for: a directory whose whole tree fits (an OCI layout of up to ~1,000
# blobs) is listed, with every directory below it, by that one request (S3's page maximum).
PROBE_KEYS = 1000
# Files whose content lives at another key (an oras ingest file published at its blob name,
# waiting for its rename) exist only in this mount's memory: kept this long / this many even
# when the kernel forgets them, so the client's rename finds them.
ALIAS_TTL = 3600.0
MAX_ALIASES = 10_000

Entry = ObjectInfo | None  # a listing entry: an object, or None for a directory


class Node:
    """One file or directory this mount has told the kernel about."""

    __slots__ = (
        "inode",
        "path",
        "is_dir",
        "version",
        "mtime",
        "mode",
        "meta_known",
        "fetched",
        "lookups",
        "opens",
        "sessions",
        "unlinked",
        "explicit_mtime",
        "sha256",
        "local_dir",
        "_lock",
    )

    def __init__(self, inode: int, path: str, is_dir: bool, mode: int) -> None:
        self.inode = inode
        self.path = path
        self.is_dir = is_dir
        # The committed object: where its content lives (normally the path's key; a zero-copy
        # ingest file's content lives at its blob key), ETag and size. None: nothing committed.
        self.version: Version | None = None
        self.mtime = time.time()
        self.mode = mode
        self.meta_known = True
        self.fetched = time.monotonic()
        self.lookups = 0
        self.opens = 0
        # Pending versions, by writing process (index.json: by open file), see ocifs.session.
        self.sessions: dict[object, WriteSession] = {}
        self.unlinked = False
        self.explicit_mtime = False  # mtime was set by utimens: store it as metadata
        self.sha256: str | None = None  # of the committed content, when this mount wrote it
        self.local_dir = False  # made by this mount's mkdir: listed even before S3 knows it
        self._lock: trio.Lock | None = None

    def __repr__(self) -> str:
        return f"<Node {self.inode} {self.path!r} {self.version}>"

    @property
    def lock(self) -> trio.Lock:
        """Serializes what changes the node's committed object: publish, rename, unlink."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    @property
    def committed(self) -> bool:
        return self.version is not None

    @property
    def abandoned(self) -> bool:
        """Created on this mount, never published, and forgotten (its close failed or it was
        removed): the kernel may still hold the inode for its name, but the name now means
        whatever S3 has (another mount may have created the file meanwhile)."""
        return self.unlinked and not self.committed and not self.sessions

    @property
    def size(self) -> int:
        """Size of the committed version (what processes without a session see)."""
        return self.version.size if self.version is not None else 0

    @property
    def immutable(self) -> bool:
        return self.version is not None and not self.sessions and is_blob_path(self.path)

    def apply(self, key: str, info: ObjectInfo, default_mode: int) -> None:
        """Take what S3 says about the object at ``key`` (this node's own key)."""
        if self.version is None or info.etag != self.version.etag or self.version.key != key:
            self.meta_known = False
            self.sha256 = None
        self.version = Version(key, info.etag, info.size)
        if info.meta_known:
            self.mtime = info.mtime
            self.mode = stat.S_IFREG | stat.S_IMODE(info.mode if info.mode is not None else default_mode)
            self.meta_known = True
            self.explicit_mtime = False
        elif not self.meta_known:
            self.mtime = info.mtime
        self.fetched = time.monotonic()

    def meta(self) -> dict[str, str]:
        return self.meta_for(self.path)

    def meta_for(self, path: str) -> dict[str, str]:
        """User metadata stored with the object at ``path`` (s3fs-compatible names).

        Blobs carry none: they are immutable, and their upload may begin before the client's
        chmod (metadata could then only be fixed by copying the object).
        """
        if is_blob_path(path):
            return {}
        m = {"mode": str(self.mode)}
        if self.explicit_mtime:
            m["mtime"] = f"{self.mtime:.6f}"
        return m


def is_layout(entries: dict[str, "Entry"]) -> bool:
    """Whether a directory's entries are an OCI image layout's (its oci-layout file, or blobs/)."""
    return entries.get("oci-layout") is not None or ("blobs" in entries and entries["blobs"] is None)


class _Listing:
    __slots__ = ("fetched", "started", "entries")

    def __init__(self, entries: dict[str, Entry], started: float) -> None:
        self.fetched = time.monotonic()
        self.started = started  # when the LIST began: what it says is at least this old
        self.entries = entries  # name -> ObjectInfo (file) or None (directory)


class Namespace:
    def __init__(self, cfg: Config, s3: ObjectStore) -> None:
        self.cfg = cfg
        self.s3 = s3
        self.file_mode = stat.S_IFREG | cfg.file_mode
        self.dir_mode = stat.S_IFDIR | cfg.dir_mode
        self.nodes: dict[int, Node] = {}
        self.paths: dict[str, Node] = {}
        self._listings: cachetools.LRUCache[str, _Listing] = cachetools.LRUCache(
            MAX_LISTED_ENTRIES, getsizeof=lambda listing: len(listing.entries) + 1
        )
        self._next_inode = ROOT_INODE + 1
        self._aliases: collections.OrderedDict[int, float] = collections.OrderedDict()  # inode -> since
        self._warned: cachetools.LRUCache[str, bool] = cachetools.LRUCache(10_000)
        self._missing: cachetools.LRUCache[str, float] = cachetools.LRUCache(10_000)  # path -> since
        # Directories whose marker object ("dir/") this mount knows to exist.
        self.markers: set[str] = set()
        # Modes given to directories by mkdir/chmod (S3 keeps none): a node the kernel forgot
        # and this mount makes again must not fall back to --dir-mode (a 0700 directory would
        # open up to other users). Kept while mounted, not across remounts.
        self.dir_modes: dict[str, int] = {}
        # gc: keep condemned blobs before saying they exist (set by the mount; None read-only).
        self.gc_marks: GcMarks | None = None
        # Told of each OCI layout a probe just listed whole (path, its entries): the mount
        # fetches what a client reads next (index.json, oci-layout, the gc views) meanwhile.
        self.on_layout: Callable[[str, dict[str, Entry]], None] | None = None
        root = Node(ROOT_INODE, "", True, self.dir_mode)
        root.lookups = 1
        self.nodes[ROOT_INODE] = root
        self.paths[""] = root

    # --- keys -------------------------------------------------------------------------------
    def key(self, path: str) -> str:
        return self.cfg.prefix + path

    def dir_key(self, path: str) -> str:
        return self.cfg.prefix + path + "/" if path else self.cfg.prefix

    # --- node table -------------------------------------------------------------------------
    def get(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise errors.NotFound(f"inode {inode} is not known") from None

    def _new_node(self, path: str, is_dir: bool) -> Node:
        self._missing.pop(path, None)
        node = Node(self._next_inode, path, is_dir, self.dir_modes.get(path, self.dir_mode) if is_dir else self.file_mode)
        self._next_inode += 1
        self.nodes[node.inode] = node
        self.paths[path] = node
        return node

    def node_for(self, path: str, info: Entry, started: float | None = None) -> Node:
        """The node for ``path`` (info None = directory), created or refreshed.

        ``started`` is when the S3 request that produced ``info`` began: an answer older than
        this mount's own last change to the node (a publish while the HEAD or LIST was in
        flight) must not roll the node back.
        """
        is_dir = info is None
        node = self.paths.get(path)
        if node is not None and node.is_dir != is_dir:
            if node.sessions:
                return node  # this mount is writing a file there: ours is newer
            self._detach(node)
            node = None
        if node is None:
            node = self._new_node(path, is_dir)
            if info is not None:
                node.meta_known = False
                node.apply(self.key(path), info, self.file_mode)
            return node
        if started is not None and node.fetched > started:
            return node
        if info is not None and not self._is_alias(node):
            node.apply(self.key(path), info, self.file_mode)
        node.fetched = time.monotonic()
        return node

    def _is_alias(self, node: Node) -> bool:
        """A file whose content lives at another key (a published zero-copy ingest file)."""
        return node.version is not None and node.version.key != self.key(node.path)

    def _detach(self, node: Node) -> None:
        if self.paths.get(node.path) is node:
            del self.paths[node.path]
        node.unlinked = True
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        """Forget a node nobody refers to any more (the kernel, an open file, a writer)."""
        if node.inode != ROOT_INODE and node.lookups <= 0 and node.opens <= 0 and not node.sessions:
            if not node.unlinked and self._is_alias(node) and node.inode in self._aliases:
                return  # only this mount knows the name: kept (bounded) for its rename
            self._aliases.pop(node.inode, None)
            self.nodes.pop(node.inode, None)
            if self.paths.get(node.path) is node:
                del self.paths[node.path]

    def keep_alias(self, node: Node) -> None:
        """``node`` was published at another key (zero-copy): keep its name, within bounds."""
        now = time.monotonic()
        self._aliases[node.inode] = now
        self._aliases.move_to_end(node.inode)
        while self._aliases:
            inode, since = next(iter(self._aliases.items()))
            if len(self._aliases) <= MAX_ALIASES and now - since < ALIAS_TTL:
                break
            del self._aliases[inode]
            old = self.nodes.get(inode)
            if old is not None:
                self.maybe_drop(old)

    def forget(self, inode: int, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None:
            return
        node.lookups -= count
        self.maybe_drop(node)

    def release_open(self, node: Node) -> None:
        node.opens -= 1
        self.maybe_drop(node)

    # --- freshness --------------------------------------------------------------------------
    def is_fresh(self, node: Node) -> bool:
        if node.is_dir or not node.committed or self._is_alias(node):
            return True
        return time.monotonic() - node.fetched < self.cfg.metadata_ttl

    def _listing(self, path: str) -> _Listing | None:
        listing = self._listings.get(path)
        if listing is not None and time.monotonic() - listing.fetched < self.cfg.metadata_ttl:
            return listing
        return None

    def listed_entries(self, path: str) -> Mapping[str, Entry] | None:
        """The entries of a fresh listing of directory ``path``, read-only (None: none fresh)."""
        listing = self._listing(path)
        return types.MappingProxyType(listing.entries) if listing is not None else None

    # --- lookups ----------------------------------------------------------------------------
    async def lookup(self, parent: Node, name: str) -> Node:
        node = await self._lookup(parent, name)
        if self.gc_marks is not None and node.immutable:
            # A client checks that a blob exists before reusing it: keep it from pending gc
            # marks first, and ask S3 again if a sweep may have deleted it since we knew it.
            if not await self.gc_marks.keep_if_condemned(self.key(node.path), node.fetched):
                node = await self._recheck(node)
        return node

    async def _recheck(self, node: Node) -> Node:
        started = time.monotonic()
        try:
            info = await self.s3.head(self.key(node.path))
        except store.NotFound:
            self.note_removed(node.path)
            self._forget_missing(node.path, started)
            raise errors.NotFound(node.path) from None
        return self.node_for(node.path, info, started)

    async def _lookup(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise errors.NotADirectory(parent.path)
        path = join(parent.path, name)
        node = self.paths.get(path)
        if node is not None and (node.sessions or self.is_fresh(node)):
            return node
        missing_since = self._missing.get(path)
        if node is None and missing_since is not None and time.monotonic() - missing_since < NEGATIVE_REUSE:
            raise errors.NotFound(path)
        listing = self._listing(parent.path)
        if listing is not None:
            if name in listing.entries:
                return self.node_for(path, listing.entries[name], listing.started)
            if node is None or node.fetched < listing.started:
                raise errors.NotFound(path)
            # else: this mount made it while that LIST was in flight; S3 is asked below
        if is_blob_path(path) or name in LAYOUT_FILES:
            # Files in any OCI layout: one HEAD answers (with mode and mtime), no LIST. A
            # missing index.json is looked for as a directory too, to be exact.
            started = time.monotonic()
            try:
                return self.node_for(path, await self.s3.head(self.key(path)), started)
            except store.NotFound:
                page = None if is_blob_path(path) else await self.s3.list_page(self.dir_key(path), delimiter=None, max_keys=1)
                if page is not None and (page.objects or page.prefixes):
                    return self.node_for(path, None)
                self._forget_missing(path, started)
                raise errors.NotFound(path) from None
        return await self._probe(path)

    def _forget_missing(self, path: str, since: float) -> None:
        """S3 said ``path`` is missing in an answer to a request sent at ``since``."""
        old = self.paths.get(path)
        if old is not None and not old.sessions and not self._is_alias(old) and not old.local_dir:
            self._detach(old)
        if self.paths.get(path) is None:
            self._missing[path] = since

    async def _probe(self, path: str) -> Node:
        """Ask S3 whether ``path`` is a file, a directory, or nothing (HEAD + LIST at once)."""
        log.debug("probe %s", path)
        started = time.monotonic()
        head: ObjectInfo | None = None
        is_dir = False

        async def do_head() -> None:
            nonlocal head
            try:
                head = await self.s3.head(self.key(path))
            except store.NotFound:
                pass

        async def do_list() -> None:
            # A page of every key below, not one key: for a directory whose whole tree fits in
            # it (an OCI layout of up to ~1,000 blobs) the same round trip lists it and each
            # directory below, and the lookups that follow (oci-layout, index.json, blobs,
            # blobs/sha256, each blob) need no request of their own.
            nonlocal is_dir, tree
            page = await self.s3.list_page(self.dir_key(path), delimiter=None, max_keys=PROBE_KEYS)
            is_dir = bool(page.objects or page.prefixes)
            if is_dir and page.next_token is None:
                tree = self._tree_from(path, page.objects, started)

        tree: dict[str, _Listing] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(do_head)
            nursery.start_soon(do_list)
            if self.gc_marks is not None:  # a blobs/<alg> directory: its blobs' gc views too
                nursery.start_soon(self.gc_marks.prefetch_for_dir, self.key(path))
        if is_dir:  # a key that is both object and prefix shows as the directory
            if head is not None:
                self._warn_once(self.key(path), "is both an object and a prefix; the object is hidden")
            for d, listing in tree.items():
                self._keep_listing(d, listing)
            if tree and self.on_layout is not None and is_layout(tree[path].entries):
                self.on_layout(path, tree[path].entries)
            return self.node_for(path, None)
        if head is not None:
            return self.node_for(path, head, started)
        old = self.paths.get(path)
        if old is not None and old.local_dir:
            return old  # made by this mount's mkdir; its marker is on its way
        self._forget_missing(path, started)
        raise errors.NotFound(path)

    async def revalidate(self, node: Node, force: bool = False, need_meta: bool = True) -> None:
        """Refresh a file's attributes from S3 if they are older than the TTL, or (with
        ``need_meta``) lack mode and mtime because they came from a listing."""
        if node.is_dir or node.unlinked or not node.committed or self._is_alias(node):
            return
        if self.is_fresh(node) and (node.meta_known or not need_meta) and not force:
            return
        started = time.monotonic()
        try:
            info = await self.s3.head(self.key(node.path))
        except store.NotFound:
            if node.fetched > started:  # this mount published it meanwhile
                return
            # Deleted (or turned into a prefix) by someone else.
            node.version = None
            if not node.sessions:
                self._detach(node)
            raise errors.NotFound(node.path) from None
        if node.fetched > started:
            return  # this mount changed it while the HEAD was in flight: ours is newer
        node.apply(self.key(node.path), info, self.file_mode)

    # --- listings ---------------------------------------------------------------------------
    async def list_dir(self, node: Node) -> tuple[list[tuple[str, Node | Entry]], float]:
        """All entries of a directory (every page), merged with this mount's own files that S3
        does not show (yet): files being created, aliases, directories it made. Returns the
        entries and when the listing began (for :meth:`node_for`)."""
        listing = self._listing(node.path)
        if listing is None:
            listing = await self._fetch_listing(node.path)
        out: dict[str, Node | Entry] = dict(listing.entries)
        for path, child in list(self.paths.items()):
            if path and parent_of(path) == node.path:
                if child.sessions or child.local_dir or self._is_alias(child) or not child.committed:
                    out.setdefault(basename(path), child)
        return sorted(out.items()), listing.started

    async def _fetch_listing(self, path: str) -> _Listing:
        started = time.monotonic()
        pages: list[ListPage] = []
        token: str | None = None
        while True:
            page = await self.s3.list_page(self.dir_key(path), token)
            pages.append(page)
            token = page.next_token
            if token is None:
                break
        listing = self._listing_from(path, pages, started)
        self._keep_listing(path, listing)
        return listing

    def _listing_from(self, path: str, pages: list[ListPage], started: float) -> _Listing:
        """The entries of directory ``path`` from every page of its (delimited) LIST."""
        prefix = self.dir_key(path)
        entries: dict[str, Entry] = {}
        files: dict[str, ObjectInfo] = {}
        for page in pages:
            for p in page.prefixes:
                name = p[len(prefix) :].removesuffix("/")
                if self._visible(p, name, path):
                    entries[name] = None
            for obj in page.objects:
                if obj.key == prefix:  # this directory's own marker
                    if path:
                        self.markers.add(path)
                    continue
                name = obj.key[len(prefix) :]
                if self._visible(obj.key, name, path):
                    files[name] = obj
        return self._merged(entries, files, started)

    def _merged(self, dirs: dict[str, Entry], files: dict[str, ObjectInfo], started: float) -> _Listing:
        """One directory's listing from its subdirectories and files: a name that is both an
        object and a prefix shows as the directory (the object is hidden, with a warning)."""
        for name, obj in files.items():
            if name in dirs:
                self._warn_once(obj.key, "is both an object and a prefix; the object is hidden")
            else:
                dirs[name] = obj
        return _Listing(dirs, started)

    def _tree_from(self, path: str, objects: list[ObjectInfo], started: float) -> dict[str, _Listing]:
        """The listings of directory ``path`` and of every directory below it, from all the
        keys below it (one LIST without delimiter that was not truncated). What each holds is
        what its own delimited LIST would show: the same hidden names, markers, and a name
        that is both a file and a directory shown as the directory."""
        prefix = self.dir_key(path)
        dirs: dict[str, dict[str, Entry]] = {path: {}}
        files: dict[str, dict[str, ObjectInfo]] = {path: {}}
        for obj in objects:
            segs = obj.key[len(prefix) :].split("/")
            parent = path
            for i, name in enumerate(segs):
                last = i == len(segs) - 1
                if last and name == "":  # "<parent>/": the directory's own marker
                    if parent:
                        self.markers.add(parent)
                    break
                if not self._visible(prefix + "/".join(segs[: i + 1]) + ("" if last else "/"), name, parent):
                    break
                if last:
                    files[parent][name] = obj
                    break
                dirs[parent][name] = None
                parent = join(parent, name)
                dirs.setdefault(parent, {})
                files.setdefault(parent, {})
        return {d: self._merged(entries, files[d], started) for d, entries in dirs.items()}

    def _keep_listing(self, path: str, listing: _Listing) -> None:
        try:
            self._listings[path] = listing
        except ValueError:  # bigger than the whole budget: used once, not kept
            pass

    def _visible(self, key: str, name: str, parent: str) -> bool:
        reason = hidden_reason(name, top_level=not parent)
        if reason is None:
            return True
        self._warn_once(key, f"is hidden: {reason}")
        return False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned[key] = True
            log.warning("object key %r %s", key, message)

    # --- local changes ----------------------------------------------------------------------
    def note_added(self, node: Node) -> None:
        """This mount created or committed ``node``: make listings agree at once."""
        listing = self._listings.get(parent_of(node.path))
        if listing is not None:
            name = basename(node.path)
            if node.is_dir:
                listing.entries[name] = None
            elif node.version is not None and not self._is_alias(node):
                v = node.version
                listing.entries[name] = ObjectInfo(v.key, v.size, node.mtime, v.etag)
            else:
                listing.entries.pop(name, None)  # shown from the node itself instead

    def note_empty_dir(self, path: str) -> None:
        """A directory this mount just created: its (empty) listing is known."""
        try:
            self._listings[path] = _Listing({}, time.monotonic())
        except ValueError:
            pass

    def note_removed(self, path: str) -> None:
        listing = self._listings.get(parent_of(path))
        if listing is not None:
            listing.entries.pop(basename(path), None)
        self._listings.pop(path, None)

    def create_node(self, path: str, is_dir: bool) -> Node:
        old = self.paths.get(path)
        if old is not None:
            self._detach(old)
        return self._new_node(path, is_dir)

    def move(self, node: Node, new_path: str) -> None:
        """Give ``node`` a new path; whatever was at the new path is unlinked."""
        old_path = node.path
        target = self.paths.get(new_path)
        if target is not None and target is not node:
            self._detach(target)
        if self.paths.get(old_path) is node:
            del self.paths[old_path]
        self.note_removed(old_path)
        node.path = new_path
        self.paths[new_path] = node
        self.note_added(node)

    def remove(self, node: Node) -> None:
        self.note_removed(node.path)
        if node.is_dir:
            self.dir_modes.pop(node.path, None)
        self._detach(node)

    def children_pending(self, path: str) -> bool:
        """Whether this mount has entries directly inside ``path`` that S3 may not show yet:
        files being created, aliases, and directories it made (their marker comes later)."""
        return any(
            (c.sessions and not c.committed or self._is_alias(c) or c.local_dir) and not c.unlinked and p and parent_of(p) == path
            for p, c in self.paths.items()
        )
