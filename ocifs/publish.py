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
* **No lost tags.** ``index.json`` is published with a conditional PUT (If-Match the version
  this mount last saw, If-None-Match for a new one); each writer's rewrite is three-way merged
  (:mod:`ocifs.indexmerge`) with what it read as the base, and on a conflict the PUT is retried
  on the new current version, with backoff, until a deadline.

**Group commit of index.json.** oras, skopeo and umoci rewrite the whole ``index.json`` for
every tag, so a fleet of CI runners pushing into one repo is a storm of rewrites of one object.
Published one by one, every close pays a conditional PUT, loses most races (to the other
processes of the same mount as much as to other mounts), and pays a GET, a merge and another
PUT each time. Instead, the closes of one ``index.json`` on one mount queue up while a publish
of it is in flight; the next publish takes all of them, applies them in close order onto the
current version (:func:`ocifs.indexmerge.combine`) and PUTs the result once. A close returns
only when a PUT holding its rewrite succeeded; when that publish fails (or the close's own
deadline passes while it loses races) the close fails and nothing of it is published. So
contention costs one PUT per mount per round instead of one per process, and the number of
closes a PUT carries grows with the load instead of the latency.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
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
from ocifs.content import Content, Version
from ocifs.indexmerge import Seen, combine
from ocifs.layout import blob_digest, ingest_target, is_index
from ocifs.namespace import Namespace, Node
from ocifs.reader import Reader
from ocifs.session import Owner, WriteSession
from ocifs.store import ObjectStore

log = logging.getLogger(__name__)

# S3 takes at most 5 GiB in one CopyObject; bigger objects are copied part by part.
MAX_SINGLE_COPY = 5 * 1024 * 1024 * 1024
COPY_PART = 512 * 1024 * 1024
# index.json publishes that lose the race back off: first wait, longest wait (seconds). A mount
# has one publish of a key in flight at a time (group commit), so retries cost S3 at most a GET
# and a PUT per mount per round; a short cap keeps a mount that lost a few times in the race
# (bench/tagstorm_sim.py: 1 s starved mounts for seconds, 0.1-0.25 s did not).
INDEX_BACKOFF = (0.01, 0.25)
# For this long after a lost race on a key, this mount reads the current version before each
# PUT of it, as the mounts it lost to do: an optimistic PUT of the version it published last
# saves a round trip when nobody else writes, but under contention it wins every race for as
# long as its queue refills and starves the other mounts.
INDEX_CONTENDED_FOR = 2.0
# A close cancelled while its rewrite is part of a PUT in flight still waits for the outcome
# (answering EIO for a rewrite that then gets published would break close's promise), but not
# forever: this long after the cancellation the outcome counts as unknown (EIO).
INDEX_OUTCOME_GRACE = 60.0
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
        """What ``owner`` last saw of ``key`` (None: the mount's latest view). A process with
        no record never read it (it found no index.json and writes a fresh one, or its record
        was evicted): no base, so its rewrite can add tags but remove none. Taking the mount's
        view instead would let it delete tags it never saw."""
        rec = self._by_owner.get((owner, key)) if owner is not None else self._by_key.get(key)
        return (rec[1], rec[2]) if rec is not None else None


@dataclasses.dataclass(eq=False)
class IndexChange:
    """One rewrite of an index.json waiting to be published: a close, an fsync or a rename."""

    owner: Owner | None  # the writing process
    ours: bytes  # what it wrote
    deadline: float  # trio time: past it, a lost race fails the change instead of retrying
    session: WriteSession | None = None  # the write session to show the result (not for renames)
    seen: Seen | None = None  # its merge base, set when it joins a publish
    taken: bool = False  # part of a publish: it can no longer be withdrawn
    error: BaseException | None = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)

    def succeed(self) -> None:
        self.done.set()

    def fail(self, exc: BaseException) -> None:
        if not self.done.is_set():
            self.error = exc
            self.done.set()

    def result(self) -> None:
        """Raise why it was not published (a copy: one error may fail a whole batch)."""
        if self.error is not None:
            raise copy.copy(self.error) from self.error


class _IndexQueue:
    """The rewrites of one index.json node waiting on this mount for the next publish."""

    __slots__ = ("waiting", "running")

    def __init__(self) -> None:
        self.waiting: list[IndexChange] = []  # in close order: a later close wins a tag moved by two
        self.running = False  # a task publishes this queue

    def take(self) -> list[IndexChange]:
        """Every waiting rewrite, now part of a publish (no longer withdrawn if cancelled)."""
        out, self.waiting = self.waiting, []
        for c in out:
            c.taken = True
        return out


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
        self.stats: collections.Counter[str] = collections.Counter()  # index.json publishes, rewrites, merges
        self._index_queues: dict[Node, _IndexQueue] = {}  # index.json nodes with closes waiting
        # index.json keys this mount lost a race on lately (see INDEX_CONTENDED_FOR)
        self._index_contended: cachetools.TTLCache[str, bool] = cachetools.TTLCache(4096, INDEX_CONTENDED_FOR, timer=trio.current_time)
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
        if is_index(node.path):
            # Only when the file became index.json (a rename) while this close waited for the
            # node lock; every other close of an index.json goes through commit_index.
            change = await self._index_change(session)
            await self._publish_index(node, [change])
            change.result()
            return
        version = await self._publish_file(node, session)
        sha256 = session.content.sha256
        session.content.rebase(version)
        session.upload.rebased()
        self._committed(node, version, sha256)

    def _committed(self, node: Node, version: Version, sha256: str | None) -> None:
        """``version`` is now ``node``'s committed content, published by this mount."""
        node.version = version
        node.sha256 = sha256
        node.meta_known = True
        node.explicit_mtime = False
        node.fetched = time.monotonic()
        if version.key != self.ns.key(node.path):
            self.ns.keep_alias(node)
        self.ns.note_added(node)
        self.on_published(node.path)
        log.debug("published %s as %s (%d bytes)", node.path, version.key, version.size)

    async def _publish_file(self, node: Node, session: WriteSession) -> Version:
        content, upload = session.content, session.upload
        key = self.ns.key(node.path)
        target = ingest_target(node.path) if self.cfg.zero_copy else None
        if target is not None:
            alg, want = blob_digest(target) or ("", "")
            if await content.digest(alg, upload.fetch) == want:
                tkey = self.ns.key(target)
                return self._seeded(Version(tkey, await upload.finish(tkey, {}, fix_meta=False), content.size), content)
            log.info("%s does not hash to its blob name; publishing it under its own name", node.path)
        expect = blob_digest(node.path)
        if expect is not None:
            got = await content.digest(expect[0], upload.fetch)
            if got != expect[1]:
                raise errors.DigestMismatch(f"refusing to publish {key}: content hashes to {expect[0]}:{got}")
        meta = node.meta()
        etag = await upload.finish(key, meta, fix_meta=expect is None)
        return self._seeded(Version(key, etag, content.size), content)

    def _seeded(self, version: Version, content: Content) -> Version:
        """``version``, with the cache holding its bytes when they are all local and fit in a
        chunk: clients read back what they just wrote (oras reads each manifest it pushed, to
        index it), and that read then costs no GET."""
        if content.size <= self.cfg.chunk_size and not content.needs_base(0, content.size):
            self.reader.put_whole(version, content.pread_local(0, content.size))
        return version

    # --- index.json ---------------------------------------------------------------------------
    async def read_index(self, node: Node, owner: Owner | None) -> Version | None:
        """A process opened index.json to read it: remember what it reads (the base of its
        next rewrite). Returns that version: the open must read exactly it."""
        v = node.version
        if v is None:
            return None
        seq = self.index.next_seq()
        try:
            content = await self.reader.whole(v)
        except store.PreconditionFailed:
            # Replaced since this mount looked. In a storm of pushes it is replaced faster
            # than a HEAD and a GET go round, so no second look: one GET reads whichever
            # version is current, whole, with its ETag.
            seq = self.index.next_seq()
            started = time.monotonic()
            etag, content = await self.s3.get(v.key)
            v = Version(v.key, etag, len(content))
            self.reader.put_whole(v, content)
            if node.fetched <= started and not node.unlinked:  # else this mount published a newer one meanwhile
                node.version = v
                node.meta_known = False  # mode and mtime: from the next HEAD
                node.fetched = time.monotonic()
        self.index.saw(owner, v.key, seq, v.etag, content)
        return v

    def _index_patience(self) -> float:
        """How long a rewrite of index.json may keep losing races before it gives up."""
        return max(1.0, self.cfg.op_timeout / 2)

    async def _index_change(self, session: WriteSession) -> IndexChange:
        content = session.content
        ours = bytes(await content.read(0, content.size, session.upload.fetch))
        return IndexChange(session.owner, ours, trio.current_time() + self._index_patience(), session)

    async def commit_index(
        self, node: Node, session: WriteSession, nursery: trio.Nursery, keep_bases: Callable[[Node], Awaitable[None]]
    ) -> None:
        """Publish ``session``, a rewrite of index.json, with every other one of ``node``
        pending on this mount: group commit (module docstring).

        Returns when a PUT holding this rewrite succeeded; raises when it was not published.
        The caller must not hold the node lock: the publisher of the node's queue (a task in
        ``nursery``, started by the first close that finds none) takes it for each publish,
        and calls ``keep_bases(node)`` first (other writers keep what their version is based
        on when this mount replaces the object).
        """
        change = await self._index_change(session)
        queue = self._index_queues.get(node)
        if queue is None:
            queue = self._index_queues[node] = _IndexQueue()
        queue.waiting.append(change)
        if not queue.running:
            queue.running = True
            nursery.start_soon(self._combine, node, queue, keep_bases)
        await self._outcome(change, queue)

    async def _outcome(self, change: IndexChange, queue: _IndexQueue) -> None:
        """Wait for ``change``'s publish; return if it succeeded, raise why it did not."""
        try:
            await change.done.wait()
        except trio.Cancelled:
            if not change.taken:
                queue.waiting.remove(change)  # never part of a PUT: nothing of it is published
                raise
            # Part of a PUT in flight: only its outcome says whether the close failed.
            with trio.CancelScope(shield=True), trio.move_on_after(INDEX_OUTCOME_GRACE):
                await change.done.wait()
            if not change.done.is_set():
                raise errors.OcifsError("index.json: gave up waiting for a publish in flight; its outcome is unknown") from None
        change.result()

    async def _combine(self, node: Node, queue: _IndexQueue, keep_bases: Callable[[Node], Awaitable[None]]) -> None:
        """The one publisher of ``node``'s queue on this mount: each round takes every rewrite
        that arrived while the previous one was published, and publishes them with one PUT."""
        batch: list[IndexChange] = []
        try:
            while queue.waiting:
                async with node.lock:  # ordered with unlink, rename and chmod of the file
                    batch = queue.take()
                    if not batch:
                        continue  # the closes that woke this task were cancelled meanwhile
                    try:
                        await keep_bases(node)
                        await self._publish_batch(node, batch, queue.take)
                    except Exception as exc:  # S3, or a bug: these closes fail (and say why), the mount goes on
                        for c in batch:
                            c.fail(exc)
                batch = []
        except BaseException:  # cancelled: the mount is stopping
            stopped = errors.OcifsError(f"{node.path}: the mount stopped before this rewrite was published")
            for c in batch + queue.take():
                c.fail(stopped)
            raise
        finally:
            queue.running = False
            if self._index_queues.get(node) is queue and not queue.waiting:
                del self._index_queues[node]

    async def _publish_batch(self, node: Node, batch: list[IndexChange], more: Callable[[], list[IndexChange]]) -> None:
        """Publish ``batch`` (node lock held); every change ends succeeded or failed."""
        if node.unlinked:
            for c in batch:
                c.succeed()  # POSIX: the bytes of an unlinked file go nowhere
            return
        if not is_index(node.path):
            # Renamed away from index.json while these closes waited: plain files now.
            for c in batch:
                assert c.session is not None
                try:
                    await self.commit(node, c.session)
                except Exception as exc:
                    c.fail(exc)
                else:
                    c.succeed()
            return
        await self._publish_index(node, batch, more)

    async def _publish_index(self, node: Node, changes: list[IndexChange], more: Callable[[], list[IndexChange]] | None = None) -> None:
        """Publish ``changes`` of ``node``'s index.json with one PUT (node lock held), and show
        each writer what was published. Every change ends succeeded or failed."""
        key = self.ns.key(node.path)
        try:
            res = await self._put_index(key, changes, more)
        except Exception as exc:
            # An S3 error: if the PUT went out, its outcome is unknown (a lost reply); it was
            # not confirmed, so every close in it fails.
            for c in changes:
                c.fail(exc)
            return
        except BaseException:
            for c in changes:
                c.fail(errors.OcifsError(f"{key}: the mount stopped while this rewrite was being published"))
            raise
        if res is None:
            return  # every change failed (rejected, or out of time)
        etag, body, published = res
        version = Version(key, etag, len(body))
        self.reader.put_whole(version, body)
        self._committed(node, version, hashlib.sha256(body).hexdigest())
        for c in published:
            if c.session is not None:
                await self._show(c.session, version, body, c.ours)
            c.succeed()

    async def _show(self, session: WriteSession, version: Version, body: bytes, ours: bytes) -> None:
        """The writer now sees what was published (the merge), as its committed base."""
        content = session.content
        try:
            if body != ours:
                await session.upload.abort()
                content.truncate(0)
                await content.write(0, body, session.upload.fetch)
            content.rebase(version)
            session.upload.rebased()
        except Exception as exc:
            # Published all the same: the close must say so. What this process sees of its
            # own version is off, but its next rewrite merges against its recorded base
            # (IndexBases), not against these bytes.
            log.warning("%s: published, but the writer's view could not be updated: %s", version.key, exc)

    async def publish_index_bytes(self, key: str, ours: bytes, owner: Owner | None) -> tuple[str, bytes]:
        """PUT ``ours`` as ``key``, merging with concurrent writers; returns (etag, body)."""
        change = IndexChange(owner, ours, trio.current_time() + self._index_patience())
        res = await self._put_index(key, [change])
        if res is None:
            change.result()
        assert res is not None
        return res[0], res[1]

    async def _put_index(
        self, key: str, changes: list[IndexChange], more: Callable[[], list[IndexChange]] | None = None
    ) -> tuple[str, bytes, list[IndexChange]] | None:
        """PUT ``changes`` combined onto the current ``key`` with a conditional PUT; on a lost
        race, read the new current version, combine again and retry, with jittered
        exponential backoff. A change past its deadline, or one that cannot be merged, fails
        and is left out; ``more()`` adds rewrites that queued meanwhile. Returns the ETag, the
        body and the changes it holds (None: none was left); records what each writer saw."""
        meta = {"mtime": f"{time.time():.6f}"}
        self._bases(key, changes)
        current: Seen | None
        if not self.conditional_writes:
            current = None  # last writer wins between mounts; this mount's rewrites still merge
        elif key in self._index_contended:
            current = await self._read_current(key)  # race on equal terms (INDEX_CONTENDED_FOR)
        else:
            # The mount's latest view: right unless another mount wrote since (a 412 says so).
            current = self.index.base_for(None, key)
        wait = INDEX_BACKOFF[0]
        lost = 0
        while True:
            live = [c for c in changes if not c.done.is_set()]
            combined = combine(current, [(c.seen, c.ours) for c in live])
            for i, why in combined.rejected.items():
                live[i].fail(errors.OcifsError(f"{key}: {why}; not published"))
            for note in combined.notes:
                log.warning("%s: %s", key, note)
            live = [c for c in live if not c.done.is_set()]
            if combined.body is None or not live:
                return None
            body = combined.body
            try:
                if not self.conditional_writes:
                    etag = await self.s3.put(key, body, meta)
                elif current is not None:
                    etag = await self.s3.put(key, body, meta, if_match=current[0])
                else:
                    etag = await self.s3.put(key, body, meta, if_none_match=True)
            except (store.PreconditionFailed, store.NotFound):
                pass
            else:
                self._saw_published(key, etag, body, live)
                self.stats["index.publishes"] += 1
                self.stats["index.rewrites"] += len(live)
                if len(live) > 1 or lost:
                    log.debug("%s: published %d rewrites with one PUT after %d lost races", key, len(live), lost)
                return etag, body, live
            lost += 1
            self._index_contended[key] = True
            self.stats["index.merges"] += 1
            now = trio.current_time()
            for c in live:
                if now > c.deadline:
                    c.fail(errors.OcifsError(f"{key}: still changing after {lost} merges; not published"))
            if more is not None:
                joined = more()
                self._bases(key, joined)
                changes += joined
            if all(c.done.is_set() for c in changes):
                return None
            await trio.sleep(random.uniform(0, wait))  # jitter: the losers do not collide again
            wait = min(wait * 2, INDEX_BACKOFF[1])
            current = await self._read_current(key)
            log.info("%s: another mount published first; merging %d rewrites into its version", key, sum(not c.done.is_set() for c in changes))

    async def _read_current(self, key: str) -> Seen | None:
        """The current version of ``key`` (None: no object), now this mount's view of it."""
        seq = self.index.next_seq()
        try:
            current = await self.s3.get(key)
        except store.NotFound:
            return None
        self.index.saw(None, key, seq, *current)
        return current

    def _bases(self, key: str, changes: list[IndexChange]) -> None:
        """Each change's merge base: what its process last saw of ``key`` (else none)."""
        for c in changes:
            c.seen = self.index.base_for(c.owner, key)

    def _saw_published(self, key: str, etag: str, body: bytes, changes: list[IndexChange]) -> None:
        # Newer than any read that began before this point (see IndexBases).
        seq = self.index.next_seq()
        for c in changes:
            # The writer's view is now what it wrote. If that was merged with others'
            # changes, its next rewrite (from the same in-memory state) must merge again.
            self.index.saw(c.owner, key, seq, etag if body == c.ours else MERGE_REQUIRED, c.ours)
        self.index.saw(None, key, seq, etag, body)

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
