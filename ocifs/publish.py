"""How a file's bytes become an S3 object, the OCI-aware way.

Three things a generic S3 filesystem does not do:

* **Zero-copy blob commit.** oras writes ``ingest/<hex>_N`` and renames it to
  ``blobs/<alg>/<hex>``. The final key is known from the first byte, so the upload streams to it
  directly; close only *seals* it (parts done, nothing visible), and the rename completes the
  multipart upload (or PUTs a small blob): no CopyObject, no second upload. An unlink or a
  rename elsewhere aborts it; nothing is ever visible under the blob key before the rename.
* **Verified blobs.** Whatever is published under ``blobs/<alg>/<hex>`` must hash to ``<hex>``
  (hashed while streaming); otherwise the close/fsync/rename fails with ``EBADMSG`` and nothing
  is published.
* **No lost tags.** ``index.json`` is published with a conditional PUT (If-Match the version the
  writing process last read, If-None-Match for a new one); on a conflict the ``manifests`` are
  three-way merged (:mod:`ocifs.indexmerge`) and the PUT retried.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable

import cachetools
import trio

from ocifs import errors, store
from ocifs.cache import ChunkCache
from ocifs.config import Config
from ocifs.indexmerge import NotAnIndex, merge
from ocifs.layout import blob_digest, is_index
from ocifs.namespace import Namespace, Node
from ocifs.s3 import S3
from ocifs.upload import WriteSession

log = logging.getLogger(__name__)

MAX_INDEX_RETRIES = 16
# S3 takes at most 5 GiB in one CopyObject; bigger objects are copied part by part.
MAX_SINGLE_COPY = 5 * 1024 * 1024 * 1024
COPY_PART = 512 * 1024 * 1024

Base = tuple[str, bytes]  # (etag, content) of an index.json version
# An If-Match value no object has: forces a merge on the next publish (see _publish_index).
MERGE_REQUIRED = '"ocifs-merge-required"'


class Publisher:
    def __init__(
        self, cfg: Config, s3: S3, ns: Namespace, cache: ChunkCache, on_published: Callable[[str], None] = lambda p: None
    ) -> None:
        self.cfg = cfg
        self.on_published = on_published  # a new key exists at this path (directory markers)
        self.s3 = s3
        self.ns = ns
        self.cache = cache
        self.conditional_writes = True
        self.writes_denied = False  # the startup probe was refused: read-only credentials
        # (process id, key) -> (node version, etag, content): the index.json as that process
        # last saw it (read, or wrote itself): the base of its next rewrite. oras reads
        # index.json once, then rewrites it several times from memory.
        self._index_reads: cachetools.LRUCache[tuple[int, str], tuple[int, str, bytes]] = cachetools.LRUCache(4096)

    # --- startup ------------------------------------------------------------------------------
    async def probe_conditional_writes(self) -> bool:
        """Does the endpoint honour If-None-Match on PUT? (Without it: last writer wins.)"""
        key = f"{self.cfg.prefix}.ocifs-probe-{uuid.uuid4().hex}"
        try:
            await self.s3.put(key, b"", {}, if_none_match=True)
            try:
                await self.s3.put(key, b"", {}, if_none_match=True)
                ok = False
            except store.PreconditionFailed:
                ok = True
        except store.Unsupported:
            ok = False
        except store.Denied as exc:
            # Read-only credentials without --read-only: say so once, and make every write
            # fail fast with EACCES instead of at close (or, for a directory, never).
            self.writes_denied = True
            log.warning("these credentials cannot write to the bucket (%s): writes will fail with EACCES; mount with --read-only to make that explicit", exc)
            return True
        except store.StoreError as exc:
            # Credentials that cannot write (a read-only deploy host without --read-only) or a
            # flaky endpoint must not stop the mount: assume support, say why.
            log.warning("could not probe conditional writes (%s); assuming the endpoint honours them", exc)
            return True
        finally:
            try:
                await self.s3.delete(key)
            except store.StoreError:
                pass
        self.conditional_writes = ok
        if not ok:
            log.warning(
                "this endpoint ignores conditional writes (If-None-Match): concurrent rewrites of "
                "index.json fall back to last-writer-wins"
            )
        return ok

    # --- commit (close, fsync, unmount) -------------------------------------------------------
    async def commit(self, node: Node, session: WriteSession, pid: int | None = None, durable: bool = False) -> None:
        key = self.ns.key(node.path)
        if session.target is not None and session.target != key and not durable:
            await session.seal()  # zero-copy: the rename to the blob name publishes
            return
        session.key = key
        if is_index(node.path):
            await self._publish_index(node, session, pid)
            return
        expect = blob_digest(node.path)
        etag, size, mtime = await session.commit(node.meta(), expect=expect, fix_meta=expect is None)
        await self._committed(node, session, etag, size, mtime)

    async def _committed(self, node: Node, session: WriteSession, etag: str, size: int, mtime: float | None) -> None:
        key = self.ns.key(node.path)
        if etag != node.etag:
            node.version += 1
        node.etag, node.size, node.committed = etag, size, True
        node.explicit_mtime = False
        node.sha256 = session.sha256_if_cheap
        session.private = False
        node.mtime = (await self.s3.head(key)).mtime if mtime is None else mtime
        node.meta_known = True
        node.fetched = time.monotonic()
        self.ns.note_added(node)
        self.on_published(node.path)
        if size <= self.cache.chunk_size:
            # Readers right after a write (oras re-reads manifests) hit memory.
            self.cache.put((key, etag, 0), session.staging.pread(size, 0))
        log.debug("published %s (%d bytes)", key, size)

    # --- index.json ---------------------------------------------------------------------------
    def record_index_read(self, pid: int | None, node: Node, version: int, etag: str, content: bytes) -> None:
        if version == node.version:
            node.index_base = (etag, content)
        if pid is not None:
            k = (pid, self.ns.key(node.path))
            old = self._index_reads.get(k)
            if old is None or old[0] <= version:  # a slow read never rolls the base back
                self._index_reads[k] = (version, etag, content)

    def _base_for(self, node: Node, pid: int | None) -> Base | None:
        if pid is not None:
            seen = self._index_reads.get((pid, self.ns.key(node.path)))
            if seen is not None:
                return seen[1], seen[2]
        return node.index_base if node.committed else None

    async def _publish_index(self, node: Node, session: WriteSession, pid: int | None) -> None:
        ours = session.staging.pread(session.size, 0)
        etag, body = await self.publish_index_bytes(node, ours, pid)
        node.version += 1
        if pid is not None:
            # The writer's view is now what it wrote. If that was merged with others' changes,
            # its next rewrite (from the same in-memory state) must merge again.
            self._index_reads[(pid, self.ns.key(node.path))] = (node.version, etag if body == ours else MERGE_REQUIRED, ours)
        if body != ours:
            session.staging.truncate(0)
            session.staging.pwrite(body, 0)
            session.size = len(body)
        await session.mark_published()
        node.index_base = (etag, body)
        await self._committed(node, session, etag, len(body), time.time())

    async def publish_index_bytes(self, node: Node, ours: bytes, pid: int | None) -> tuple[str, bytes]:
        """PUT ``ours`` as the node's index.json, merging with concurrent writers."""
        key = self.ns.key(node.path)
        base = self._base_for(node, pid)
        meta = node.meta()
        meta["mtime"] = f"{time.time():.6f}"
        if not self.conditional_writes:
            return await self.s3.put(key, ours, meta), ours
        expected: str | None = base[0] if base else (node.etag if node.committed else None)
        body = ours
        for _ in range(MAX_INDEX_RETRIES):
            try:
                if expected:
                    etag = await self.s3.put(key, body, meta, if_match=expected)
                else:
                    etag = await self.s3.put(key, body, meta, if_none_match=True)
                return etag, body
            except (store.PreconditionFailed, store.NotFound):
                pass
            self.s3.stats["index.merges"] += 1
            try:
                theirs_etag, theirs = await self.s3.get(key)
            except store.NotFound:
                theirs_etag, theirs = None, None
            try:
                body, conflicts = merge(base[1] if base else None, ours, theirs)
            except NotAnIndex as exc:
                log.warning("%s: cannot merge concurrent rewrites (%s); this write wins", key, exc)
                body, conflicts = ours, []
            for c in conflicts:
                log.warning("%s: %s", key, c)
            log.info("%s changed since it was read; merged this write into the current version", key)
            expected = theirs_etag
        raise errors.RemoteError(f"{key}: still changing after {MAX_INDEX_RETRIES} merges; not published")

    # --- rename -------------------------------------------------------------------------------
    async def move(self, src: Node, new_path: str, pid: int | None) -> None:
        """Make ``src``'s content live at ``new_path``; the caller updates the namespace."""
        old_key, new_key = self.ns.key(src.path), self.ns.key(new_path)
        session = src.session
        expect = blob_digest(new_path)
        if is_index(new_path):
            await self._move_onto_index(src, new_path, pid)
            return
        if session is not None and session.dirty:
            if session.target == new_key or not session.streaming:
                # Zero-copy commit (or nothing sent yet): publish straight at the new key.
                had_object = src.committed
                session.key = new_key
                etag, size, mtime = await session.commit(src.meta_for(new_path), expect=expect, fix_meta=expect is None)
                if had_object:
                    await self.s3.delete(old_key)
                    self.cache.invalidate_key(old_key)
                src_path = src.path
                src.path = new_path  # _committed works on the new name
                try:
                    await self._committed(src, session, etag, size, mtime)
                finally:
                    src.path = src_path
                return
            # A multipart upload to the old key is under way: finish it, then copy it.
            await self.commit(src, session, pid, durable=True)
        if not src.committed:
            return
        if expect is not None:
            await self._verify_object(src, old_key, expect)
        src.etag = await self.server_copy(old_key, new_key, src.size, src.meta_for(new_path))
        self.on_published(new_path)
        await self.s3.delete(old_key)
        self.cache.invalidate_key(old_key)
        if session is not None:
            session.key = new_key

    async def _move_onto_index(self, src: Node, new_path: str, pid: int | None) -> None:
        """umoci and zot replace index.json by renaming a temp file over it: merge, then PUT."""
        session = src.session
        if session is not None:
            ours = session.staging.pread(session.size, 0)
        elif src.committed:
            _, ours = await self.s3.get(self.ns.key(src.path))
        else:
            ours = b""
        target = self.ns.paths.get(new_path)
        holder = target if target is not None and not target.is_dir else src
        probe_path = holder.path
        holder.path = new_path
        try:
            etag, body = await self.publish_index_bytes(holder, ours, pid)
        finally:
            holder.path = probe_path
        if src.committed:
            await self.s3.delete(self.ns.key(src.path))
            self.cache.invalidate_key(self.ns.key(src.path))
        if session is not None:
            await session.mark_published()
            session.staging.truncate(0)
            session.staging.pwrite(body, 0)
            session.size = len(body)
        src.etag, src.size, src.committed = etag, len(body), True
        src.version += 1
        src.mtime = time.time()
        src.fetched = time.monotonic()
        src.index_base = (etag, body)
        self.cache.put((self.ns.key(new_path), etag, 0), body)
        self.on_published(new_path)

    async def _verify_object(self, src: Node, key: str, expect: tuple[str, str]) -> None:
        alg, want = expect
        got = src.sha256 if alg == "sha256" else None
        if got is None:
            h = hashlib.new(alg)
            cs = self.cache.chunk_size
            for idx in range(-(-src.size // cs)):
                h.update(await self._chunk(key, src.etag, src.size, idx))
            got = h.hexdigest()
            if alg == "sha256":
                src.sha256 = got
        if got != want:
            raise errors.DigestMismatch(f"refusing to rename {key} to a blob named {alg}:{want}: it hashes to {alg}:{got}")

    async def _chunk(self, key: str, etag: str, size: int, idx: int) -> bytes:
        async def fetch(start: int, end: int) -> bytes:
            return await self.s3.get_range(key, start, end, etag or None)

        return await self.cache.get((key, etag, idx), size, fetch)

    async def server_copy(self, src: str, dst: str, size: int, meta: dict[str, str]) -> str:
        """CopyObject, or parallel UploadPartCopy for objects over 5 GiB."""
        if size <= MAX_SINGLE_COPY:
            return await self.s3.copy(src, dst, meta)
        upload_id = await self.s3.create_multipart(dst, meta)
        etags: dict[int, str] = {}

        async def part(n: int, start: int, end: int) -> None:
            etags[n] = await self.s3.upload_part_copy(src, dst, upload_id, n, start, end)

        try:
            async with trio.open_nursery() as nursery:
                for n, start in enumerate(range(0, size, COPY_PART), 1):
                    nursery.start_soon(part, n, start, min(start + COPY_PART, size))
            return await self.s3.complete_multipart(dst, upload_id, sorted(etags.items()))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.s3.abort_multipart(dst, upload_id)
            raise
