"""How a file's bytes become an S3 object, the OCI-aware way.

Three things a generic S3 filesystem does not do:

* **Zero-copy blob commit.** oras writes ``ingest/<hex>_N`` and renames it to
  ``blobs/<alg>/<hex>``. The final key is known from the first byte, so the upload streams to
  the blob key directly, and close publishes it there once the content hashes to ``<hex>``;
  the rename then only moves the name (no CopyObject, no second upload). A blob published
  early is harmless: it is exactly the blob its name says.
* **Verified blobs.** Whatever is published under ``blobs/<alg>/<hex>`` must hash to ``<hex>``
  (hashed while streaming); otherwise the close/fsync/rename fails with ``EBADMSG`` and nothing
  is published.
* **No lost tags.** ``index.json`` is published with a conditional PUT (If-Match the version the
  writing process last read, If-None-Match for a new one); on a conflict the ``manifests`` are
  three-way merged (:mod:`ocifs.indexmerge`) and the PUT retried, with backoff, until a
  deadline.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import cachetools
import trio

from ocifs import errors, store
from ocifs.config import Config
from ocifs.content import Version
from ocifs.indexmerge import NotAnIndex, is_index_doc, merge
from ocifs.layout import blob_digest, ingest_target, is_index
from ocifs.namespace import Namespace, Node
from ocifs.reader import Reader
from ocifs.session import Owner, WriteSession
from ocifs.store import ObjectStore

log = logging.getLogger(__name__)

# S3 takes at most 5 GiB in one CopyObject; bigger objects are copied part by part.
MAX_SINGLE_COPY = 5 * 1024 * 1024 * 1024
COPY_PART = 512 * 1024 * 1024
# index.json publishes that lose the race back off: first wait, longest wait (seconds).
INDEX_BACKOFF = (0.01, 1.0)
# Bytes of index.json versions remembered as merge bases (per process and per key).
INDEX_BASES_BYTES = 64 * 1024 * 1024
# An If-Match value no object has: forces a merge on the next publish (see IndexBases).
MERGE_REQUIRED = '"ocifs-merge-required"'


class IndexBases:
    """What each process last saw of each ``index.json``: the base of its next rewrite.

    oras, skopeo and umoci read index.json once, then rewrite it (several times) from memory.
    Bases are kept per *process* (tgid + start time, so a reused pid starts fresh) and per key
    (not per in-memory node, which a rename or a kernel forget recreates), bounded in bytes.
    Every record carries a sequence number: taken when a read *began* (it returns that version
    or a newer one), or when a publish *completed*. A slow read that began before a publish
    completed never replaces what the publish recorded.
    """

    def __init__(self, max_bytes: int = INDEX_BASES_BYTES) -> None:
        self._seq = 0
        size = lambda rec: len(rec[2]) + 256  # noqa: E731
        self._by_owner: cachetools.LRUCache[tuple[Owner, str], tuple[int, str, bytes]] = cachetools.LRUCache(max_bytes, getsizeof=size)
        self._by_key: cachetools.LRUCache[str, tuple[int, str, bytes]] = cachetools.LRUCache(max_bytes // 4, getsizeof=size)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _put(self, cache: cachetools.LRUCache, k: object, rec: tuple[int, str, bytes]) -> None:
        old = cache.get(k)
        if old is None or old[0] <= rec[0]:
            try:
                cache[k] = rec
            except ValueError:  # one index.json bigger than the whole budget: not kept
                cache.pop(k, None)

    def saw(self, owner: Owner | None, key: str, seq: int, etag: str, content: bytes) -> None:
        """``owner`` read (or wrote) ``content`` at ``etag``; ``seq`` from before the read."""
        self._put(self._by_key, key, (seq, etag, content))
        if owner is not None:
            self._put(self._by_owner, (owner, key), (seq, etag, content))

    def base_for(self, owner: Owner | None, key: str) -> tuple[str, bytes] | None:
        rec = self._by_owner.get((owner, key)) if owner is not None else None
        if rec is None:
            rec = self._by_key.get(key)
        return (rec[1], rec[2]) if rec is not None else None


class Publisher:
    def __init__(
        self, cfg: Config, s3: ObjectStore, ns: Namespace, reader: Reader, on_published: Callable[[str], None] = lambda p: None
    ) -> None:
        self.cfg = cfg
        self.s3 = s3
        self.ns = ns
        self.reader = reader
        self.on_published = on_published  # a new key exists at this path (directory markers)
        self.index = IndexBases()
        self.stats: collections.Counter[str] = collections.Counter()  # index.json merges
        self.conditional_writes = True
        self.writes_denied = False  # the startup probe was refused: read-only credentials

    # --- startup ------------------------------------------------------------------------------
    async def probe_conditional_writes(self) -> bool:
        """Does the endpoint honour If-None-Match *and* If-Match on PUT? Without them
        concurrent index.json rewrites fall back to last-writer-wins (said loudly)."""
        key = f"{self.cfg.prefix}.ocifs-probe-{uuid.uuid4().hex}"
        try:
            etag = await self.s3.put(key, b"probe", {}, if_none_match=True)
            none_match = await _refused(self.s3.put(key, b"probe", {}, if_none_match=True))
            if_match = await _refused(self.s3.put(key, b"probe", {}, if_match='"0000000000000000"'))
            if if_match:  # a right ETag must still be accepted
                await self.s3.put(key, b"probe", {}, if_match=etag)
            ok = none_match and if_match
        except store.Unsupported:
            ok = False
        except store.Denied as exc:
            # Read-only credentials without --read-only: say so once, and make every write
            # fail fast with EACCES instead of at close (or, for a directory, never).
            self.writes_denied = True
            log.warning("these credentials cannot write to the bucket (%s): writes will fail with EACCES; mount with --read-only to make that explicit", exc)
            return True
        except store.StoreError as exc:
            log.warning("could not probe conditional writes (%s); assuming the endpoint honours them", exc)
            return True
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                try:
                    await self.s3.delete(key)
                except store.StoreError:
                    pass
        self.conditional_writes = ok
        if not ok:
            log.warning(
                "this endpoint ignores conditional writes (If-None-Match / If-Match on PUT): "
                "concurrent rewrites of index.json fall back to last-writer-wins"
            )
        return ok

    # --- where a session's content goes ---------------------------------------------------------
    def stream_target(self, node: Node) -> tuple[str, dict[str, str]] | None:
        """Key and metadata a session of ``node`` streams its upload to while written (None:
        it does not stream: index.json is published whole, with a conditional PUT)."""
        if is_index(node.path):
            return None
        target = ingest_target(node.path) if self.cfg.zero_copy else None
        if target is not None:
            return self.ns.key(target), {}
        return self.ns.key(node.path), node.meta()

    async def commit(self, node: Node, session: WriteSession) -> None:
        """Publish ``session`` as the new committed version of ``node`` (node lock held)."""
        if node.unlinked:
            return  # POSIX: the bytes of an unlinked file go nowhere
        content = session.content
        fetch = session.upload.fetch
        path = node.path
        if is_index(path):
            body = await content.read(0, content.size, fetch)
            etag, merged = await self.publish_index_bytes(self.ns.key(path), bytes(body), session.owner)
            if merged != body:  # the writer now sees what it published: the merge
                await session.upload.abort()
                content.truncate(0)
                await content.write(0, merged, fetch)
            version = Version(self.ns.key(path), etag, len(merged))
            self.reader.put_whole(version, merged)
        else:
            version = await self._publish_file(node, session)
        node.version = version
        node.sha256 = content.sha256
        node.meta_known = True
        node.explicit_mtime = False
        node.fetched = time.monotonic()
        content.rebase(version)
        session.upload.rebased()
        if version.key != self.ns.key(path):
            self.ns.keep_alias(node)
        self.ns.note_added(node)
        self.on_published(path)
        log.debug("published %s as %s (%d bytes)", path, version.key, version.size)

    async def _publish_file(self, node: Node, session: WriteSession) -> Version:
        content, upload = session.content, session.upload
        key = self.ns.key(node.path)
        target = ingest_target(node.path) if self.cfg.zero_copy else None
        if target is not None:
            alg, want = blob_digest(target) or ("", "")
            if await content.digest(alg, upload.fetch) == want:
                tkey = self.ns.key(target)
                return Version(tkey, await upload.finish(tkey, {}, fix_meta=False), content.size)
            log.info("%s does not hash to its blob name; publishing it under its own name", node.path)
        expect = blob_digest(node.path)
        if expect is not None:
            got = await content.digest(expect[0], upload.fetch)
            if got != expect[1]:
                raise errors.DigestMismatch(f"refusing to publish {key}: content hashes to {expect[0]}:{got}")
        meta = node.meta()
        etag = await upload.finish(key, meta, fix_meta=expect is None)
        if content.size <= self.cfg.chunk_size and not content.needs_base(0, content.size):
            self.reader.put_whole(Version(key, etag, content.size), content.pread_local(0, content.size))
        return Version(key, etag, content.size)

    # --- index.json ---------------------------------------------------------------------------
    async def read_index(self, node: Node, owner: Owner | None) -> None:
        """A process opened index.json to read it: remember what it read (its next base)."""
        for attempt in range(3):
            v = node.version
            if v is None:
                return
            seq = self.index.next_seq()
            try:
                content = await self.reader.whole(v)
            except store.PreconditionFailed:  # replaced since our HEAD: look again
                if attempt == 2:
                    raise
                await self.ns.revalidate(node, force=True)
                continue
            self.index.saw(owner, v.key, seq, v.etag, content)
            return

    async def publish_index_bytes(self, key: str, ours: bytes, owner: Owner | None) -> tuple[str, bytes]:
        """PUT ``ours`` as ``key``, merging with concurrent writers; returns (etag, body)."""
        meta = {"mtime": f"{time.time():.6f}"}
        if not self.conditional_writes:
            return await self.s3.put(key, ours, meta), ours
        base = self.index.base_for(owner, key)
        expected: str | None = base[0] if base else None
        body = ours
        deadline = trio.current_time() + max(1.0, self.cfg.op_timeout / 2)
        wait = INDEX_BACKOFF[0]
        merges = 0
        while True:
            try:
                if expected:
                    etag = await self.s3.put(key, body, meta, if_match=expected)
                else:
                    etag = await self.s3.put(key, body, meta, if_none_match=True)
                # Newer than any read that began before this point (see IndexBases).
                seq = self.index.next_seq()
                # The writer's view is now what it wrote. If that was merged with others'
                # changes, its next rewrite (from the same in-memory state) must merge again.
                self.index.saw(owner, key, seq, etag if body == ours else MERGE_REQUIRED, ours)
                if owner is not None:
                    self.index.saw(None, key, seq, etag, body)
                return etag, body
            except (store.PreconditionFailed, store.NotFound):
                pass
            self.stats["index.merges"] += 1
            merges += 1
            if trio.current_time() > deadline:
                raise errors.OcifsError(f"{key}: still changing after {merges} merges; not published")
            await trio.sleep(random.uniform(0, wait))  # jitter: the losers do not collide again
            wait = min(wait * 2, INDEX_BACKOFF[1])
            try:
                theirs_etag, theirs = await self.s3.get(key)
            except store.NotFound:
                theirs_etag, theirs = None, None
            try:
                body, conflicts = merge(base[1] if base else None, ours, theirs)
            except NotAnIndex as exc:
                if is_index_doc(ours):
                    log.warning("%s: the current version is not an image index (%s); this write replaces it", key, exc)
                    body, conflicts = ours, []
                else:
                    # Never let content that is no index (an empty or half-written file: a
                    # forked child closing an inherited descriptor) win over a real one.
                    raise errors.OcifsError(f"{key}: changed meanwhile, and this write is not an image index; not published") from None
            for c in conflicts:
                log.warning("%s: %s", key, c)
            log.info("%s changed since it was read; merged this write into the current version", key)
            expected = theirs_etag

    # --- rename -------------------------------------------------------------------------------
    async def move(self, src: Node, new_path: str, owner: Owner | None) -> None:
        """Make ``src``'s committed content live at ``new_path`` (node locks held); pending
        write sessions follow the node and publish at its new name when they close."""
        v = src.version
        if v is None:
            return  # nothing committed yet: the rename is the namespace's alone
        old_key, new_key = self.ns.key(src.path), self.ns.key(new_path)
        if is_index(new_path):
            body = await self.reader.whole(v)
            etag, merged = await self.publish_index_bytes(new_key, body, owner)
            new = Version(new_key, etag, len(merged))
            self.reader.put_whole(new, merged)
        elif v.key == new_key:
            new = v  # a zero-copy ingest file renamed onto its blob: already there
        else:
            expect = blob_digest(new_path)
            if expect is not None:
                await self._verify_object(src, v, expect)
            etag = await self.server_copy(v.key, new_key, v.size, src.meta_for(new_path), v.etag)
            new = Version(new_key, etag, v.size)
        if v.key == old_key:
            await self.s3.delete(old_key)
            self.reader.cache.invalidate_key(old_key)
        src.version = new
        src.fetched = time.monotonic()
        self.on_published(new_path)

    async def _verify_object(self, src: Node, v: Version, expect: tuple[str, str]) -> None:
        alg, want = expect
        got = src.sha256 if alg == "sha256" else None
        if got is None:
            h = hashlib.new(alg)
            for idx in range(-(-v.size // self.cfg.chunk_size)):
                h.update(await self.reader.chunk(v, idx))
            got = h.hexdigest()
            if alg == "sha256":
                src.sha256 = got
        if got != want:
            raise errors.DigestMismatch(f"refusing to rename {v.key} to a blob named {alg}:{want}: it hashes to {alg}:{got}")

    async def server_copy(self, src: str, dst: str, size: int, meta: dict[str, str], src_etag: str | None = None) -> str:
        """CopyObject, or parallel UploadPartCopy for objects over 5 GiB."""
        if size <= MAX_SINGLE_COPY:
            return await self.s3.copy(src, dst, meta, src_etag)
        upload_id = await self.s3.create_multipart(dst, meta)
        etags: dict[int, str] = {}

        async def part(n: int, start: int, end: int) -> None:
            etags[n] = await self.s3.upload_part_copy(src, dst, upload_id, n, start, end, src_etag)

        try:
            async with trio.open_nursery() as nursery:
                for n, start in enumerate(range(0, size, COPY_PART), 1):
                    nursery.start_soon(part, n, start, min(start + COPY_PART, size))
            return await self.s3.complete_multipart(dst, upload_id, sorted(etags.items()))
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                await self.s3.abort_multipart(dst, upload_id)
            raise


async def _refused(put: Awaitable[str]) -> bool:
    """Whether a conditional PUT was refused with 412 (as it must be)."""
    try:
        await put
    except store.PreconditionFailed:
        return True
    return False
