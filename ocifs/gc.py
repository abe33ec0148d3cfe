"""One ``ocifs gc`` run: sweep the marks whose grace has passed, then mark what is unreachable.

Order matters, and each step says why:

1. LIST the keeps, then the marks (a keep listed first whose mark is missing is an orphan:
   mounts write keeps only for marks they have seen). Decide which marks are due.
2. LIST the blobs, *then* read each ``index.json`` and walk it: a blob pushed after the LIST
   is not condemned, and a manifest written after the LIST but tagged before the read is
   read by digest, so its blobs count as reachable.
3. Sweep the due marks: switch each to ``sweeping`` (conditional PUT: one sweeper per mark),
   *then* LIST the keeps (the handshake in :mod:`ocifs.gcmarks`). A condemned blob is
   deleted only if nothing reaches it from index.json or from any blob that survives this
   sweep (kept blobs, and blobs no due mark condemns: a kept or younger manifest keeps its
   layers), and its ETag is the marked one. All of it within :data:`gcmarks.LEASE`.
4. Write this run's mark with the rest of the unreachable blobs (``--grace 0``: sweep it now).
5. Drop swept marks older than :data:`gcmarks.RETENTION` and orphaned keeps.

The decisions are pure functions (:func:`condemn`, :func:`spare_reason`,
:func:`etag_verdict`), tested without S3 in ``tests/unit/test_gc_decisions.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import trio

from ocifs import store
from ocifs.gcmarks import (
    GC_DIR,
    LEASE,
    PENDING,
    RETENTION,
    SWEEPING,
    SWEPT,
    Clock,
    Mark,
    keep_name,
    keep_prefix,
    mark_key,
    marks_prefix,
    new_run_id,
)
from ocifs.oci import Layout, Reach, StoreBlobs, index_doc, list_objects, load_layouts, reachable
from ocifs.store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

# The sweeper stops deleting this long before its lease ends (requests in flight still land).
LEASE_MARGIN = 15.0
DELETE_CONCURRENCY = 16


class ProgressLike(Protocol):
    def phase(self, what: str, total: int | None = None) -> None: ...

    def step(self, nbytes: int = 0) -> None: ...


class _NoProgress:
    def phase(self, what: str, total: int | None = None) -> None:
        pass

    def step(self, nbytes: int = 0) -> None:
        pass


# --- pure decisions -------------------------------------------------------------------------
def condemn(layouts: Iterable[Layout], reach: Mapping[str, Reach], exclude: set[str]) -> dict[str, ObjectInfo]:
    """Listed blobs of layouts with a valid index.json (``reach`` has their root) that
    nothing reaches, minus ``exclude`` (keys a pending mark already condemns, or just deleted)."""
    out: dict[str, ObjectInfo] = {}
    for lay in layouts:
        r = reach.get(lay.root)
        if r is None:
            continue  # no valid index.json: never guess
        for dig, info in lay.blobs.items():
            if dig not in r.reached and info.key not in exclude:
                out[info.key] = info
    return out


def survivors(lay: Layout, reached: set[str], doomed: set[str], kept: set[str]) -> set[str]:
    """Digests of ``lay`` that outlive a sweep of ``doomed``: unreached but not doomed, or kept.
    Whatever they reach must stay (a manifest one mark kept may have layers another condemned)."""
    return {d for d in lay.blobs if d not in reached and d not in doomed} | (kept & set(lay.blobs))


def spare_reason(key: str, *, listed: bool, judged: bool, kept: bool, reachable: bool) -> str | None:
    """Why a condemned key must not be deleted (None: it may be, once its ETag is checked)."""
    if not listed:
        return "gone already"
    if not judged:
        return "its layout has no valid index.json"
    if kept:
        return "kept by a mount"
    if reachable:
        return "reachable again"
    return None


def etag_verdict(marked: str, now: str | None) -> str | None:
    """The last check before a delete (None: delete). Equal content gives an equal ETag, so
    this cannot tell a re-upload from the marked object; keeps protect re-uploads (a mount
    keeps a condemned key before it publishes it). It does catch other content or another
    part layout under the key since the mark."""
    if now is None:
        return "gone already"
    if now != marked:
        return "changed since it was marked"
    return None


# --- the run --------------------------------------------------------------------------------
@dataclasses.dataclass
class MarkRef:
    key: str
    etag: str
    mark: Mark


@dataclasses.dataclass
class GcReport:
    run: str | None = None  # this run's mark (None: nothing condemned)
    condemned: list[ObjectInfo] = dataclasses.field(default_factory=list)
    deleted: list[ObjectInfo] = dataclasses.field(default_factory=list)
    spared: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, reason)
    swept: list[str] = dataclasses.field(default_factory=list)  # runs swept
    busy: list[str] = dataclasses.field(default_factory=list)  # runs another gc is sweeping
    incomplete: list[str] = dataclasses.field(default_factory=list)  # runs whose lease ran out
    pending: list[str] = dataclasses.field(default_factory=list)  # runs still in their grace
    skipped_layouts: list[str] = dataclasses.field(default_factory=list)
    removed_marks: int = 0


class Collector:
    """One gc run on ``prefix`` (see the module docstring for the steps and their order)."""

    def __init__(
        self,
        s3: ObjectStore,
        prefix: str,
        grace: float,
        dry_run: bool,
        progress: ProgressLike | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.s3 = s3
        self.prefix = prefix
        self.grace = grace
        self.dry_run = dry_run
        self.progress = progress or _NoProgress()
        self.clock = clock or Clock()
        self.report = GcReport()
        self.layouts: list[Layout] = []
        self.docs: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, StoreBlobs] = {}
        self.reach: dict[str, Reach] = {}  # from index.json alone
        self.owner: dict[str, Layout] = {}  # full blob key -> its layout
        self.infos: dict[str, ObjectInfo] = {}  # full blob key -> as listed

    async def run(self) -> GcReport:
        self.progress.phase("gc: reading marks")
        keeps_before = await self._keep_runs()
        marks = await self._load_marks()
        now = self.clock.wall()
        due = [m for m in marks if m.mark.due(now, self.grace)]
        self.report.pending = [m.mark.run for m in marks if m.mark.state == PENDING and m not in due]
        await self._read_layouts()
        deleted = await self._sweep(due) if due else set()
        swept = set(self.report.swept)
        exclude = {k for m in marks if m.mark.state != SWEPT and m.mark.run not in swept for k in m.mark.condemned}
        await self._mark(condemn(self.layouts, self.reach, exclude | deleted))
        if not self.dry_run:
            await self._housekeeping(marks, keeps_before)
        return self.report

    # --- reading ------------------------------------------------------------------------------
    async def _load_marks(self) -> list[MarkRef]:
        refs: list[MarkRef] = []
        for o in await list_objects(self.s3, marks_prefix(self.prefix)):
            if not o.key.endswith(".json"):
                continue
            try:
                etag, data = await self.s3.get(o.key)
                refs.append(MarkRef(o.key, etag, Mark.decode(data)))
            except store.NotFound:
                continue  # swept and removed meanwhile
            except ValueError as exc:
                log.warning("ignoring %s: %s", o.key, exc)
        return refs

    async def _keep_runs(self) -> dict[str, list[str]]:
        """run id -> its keep objects' keys."""
        base = f"{self.prefix}{GC_DIR}keep/"
        runs: dict[str, list[str]] = {}
        for o in await list_objects(self.s3, base):
            run, _, name = o.key[len(base) :].partition("/")
            if name:
                runs.setdefault(run, []).append(o.key)
        return runs

    async def _read_layouts(self) -> None:
        self.progress.phase("gc: listing blobs")
        self.layouts = await load_layouts(self.s3, self.prefix)
        self.progress.phase("gc: reading manifests")
        for lay in self.layouts:
            for info in lay.blobs.values():
                self.owner[info.key] = lay
                self.infos[info.key] = info
            doc = await index_doc(self.s3, lay)
            if doc is None:
                self.report.skipped_layouts.append(lay.name)
                continue
            self.docs[lay.root] = doc
            self.blobs[lay.root] = blobs = StoreBlobs(self.s3, lay, on_read=self.progress.step)
            self.reach[lay.root] = await reachable(doc, blobs, _sizes(lay))

    # --- sweep --------------------------------------------------------------------------------
    async def _sweep(self, refs: list[MarkRef]) -> set[str]:
        """Sweep ``refs``; returns the keys deleted."""
        deleted: set[str] = set()
        with trio.move_on_after(LEASE - LEASE_MARGIN) as lease:
            active = [r for r in refs if await self._begin(r)]
            if not active:
                return deleted
            kept = await self._kept_keys(active)
            doomed = {k for r in active for k in r.mark.condemned}
            reachable_keys = await self._reachable_keys(doomed, kept)
            marked: dict[str, str] = {}
            for r in active:
                for key, etag in r.mark.condemned.items():
                    lay = self.owner.get(key)
                    reason = spare_reason(
                        key,
                        listed=lay is not None,
                        judged=lay is not None and lay.root in self.docs,
                        kept=key in kept,
                        reachable=key in reachable_keys,
                    )
                    if reason is None:
                        marked[key] = etag
                    else:
                        self.report.spared.append((key, reason))
            await self._delete(marked, deleted)
        if lease.cancelled_caught:
            for r in refs:
                if r.mark.run not in self.report.busy:
                    await self._resume_later(r, deleted)
            return deleted
        for r in active:
            await self._finish(r, deleted)
        return deleted

    async def _begin(self, ref: MarkRef) -> bool:
        """Switch a due mark to sweeping, unless another gc got there first."""
        if self.dry_run:
            return True
        mark = dataclasses.replace(ref.mark, state=SWEEPING, sweep_started=self.clock.wall())
        try:
            ref.etag = await self.s3.put(ref.key, mark.encode(), {}, if_match=ref.etag)
        except (store.PreconditionFailed, store.NotFound):
            self.report.busy.append(ref.mark.run)
            return False
        ref.mark = mark
        return True

    async def _kept_keys(self, active: list[MarkRef]) -> set[str]:
        """Condemned keys some mount kept (listed after every switch to sweeping)."""
        by_name = {keep_name(k): k for r in active for k in r.mark.condemned}
        kept = set()
        for keys in (await self._keep_runs()).values():
            for k in keys:
                name = k.rpartition("/")[2]
                if name in by_name:
                    kept.add(by_name[name])
        return kept

    async def _reachable_keys(self, doomed: set[str], kept: set[str]) -> set[str]:
        """Full keys reachable from index.json or from a blob that survives this sweep."""
        out: set[str] = set()
        for lay in self.layouts:
            base = self.reach.get(lay.root)
            if base is None:
                continue
            doomed_d = {d for d, info in lay.blobs.items() if info.key in doomed}
            kept_d = {d for d, info in lay.blobs.items() if info.key in kept}
            roots = survivors(lay, base.reached, doomed_d, kept_d)
            r = base
            if doomed_d and roots:
                r = await reachable(self.docs[lay.root], self.blobs[lay.root], _sizes(lay), extra_roots=roots)
            out.update(key for d in r.reached if (key := lay.blob_key(d)) is not None)
        return out

    async def _delete(self, marked: dict[str, str], deleted: set[str]) -> None:
        """HEAD each candidate (ETag as marked?) and delete it."""
        self.progress.phase("gc: sweeping", len(marked))
        limiter = trio.CapacityLimiter(DELETE_CONCURRENCY)

        async def one(key: str, etag: str) -> None:
            async with limiter:
                try:
                    now: str | None = (await self.s3.head(key)).etag
                except store.NotFound:
                    now = None
                reason = etag_verdict(etag, now)
                if reason is not None:
                    self.report.spared.append((key, reason))
                    return
                if not self.dry_run:
                    await self.s3.delete(key)
                deleted.add(key)
                self.report.deleted.append(self.infos[key])
                self.progress.step()

        async with trio.open_nursery() as nursery:
            for key, etag in sorted(marked.items()):
                nursery.start_soon(one, key, etag)

    async def _resume_later(self, ref: MarkRef, deleted: set[str]) -> None:
        """The lease ran out: put the mark back to pending with what is left, so that mounts
        waiting on the sweep go on at once and the next gc run sweeps the rest."""
        self.report.incomplete.append(ref.mark.run)
        if self.dry_run or ref.mark.state != SWEEPING:
            return
        left = {k: e for k, e in ref.mark.condemned.items() if k not in deleted}
        mark = dataclasses.replace(ref.mark, state=PENDING, sweep_started=None, condemned=left)
        try:
            ref.etag = await self.s3.put(ref.key, mark.encode(), {}, if_match=ref.etag)
            ref.mark = mark
        except (store.PreconditionFailed, store.NotFound):
            pass  # taken over meanwhile

    async def _finish(self, ref: MarkRef, deleted: set[str]) -> None:
        """Leave a small swept tombstone (mounts learn that blobs went) and drop the keeps."""
        self.report.swept.append(ref.mark.run)
        if self.dry_run:
            return
        n = sum(1 for k in ref.mark.condemned if k in deleted)
        tomb = dataclasses.replace(ref.mark, state=SWEPT, swept_at=self.clock.wall(), deleted=n)
        try:
            ref.etag = await self.s3.put(ref.key, tomb.encode(), {}, if_match=ref.etag)
        except (store.PreconditionFailed, store.NotFound):
            log.info("gc run %s: mark changed under this sweep (taken over)", ref.mark.run)
            return
        ref.mark = tomb
        await self._delete_prefix(keep_prefix(self.prefix, ref.mark.run))

    # --- mark ---------------------------------------------------------------------------------
    async def _mark(self, condemned: dict[str, ObjectInfo]) -> None:
        self.report.condemned = sorted(condemned.values(), key=lambda o: o.key)
        if not condemned:
            return
        now = self.clock.wall()
        mark = Mark(new_run_id(now), now, self.grace, {k: o.etag for k, o in condemned.items()}, host=socket.gethostname())
        self.report.run = mark.run
        ref = MarkRef(mark_key(self.prefix, mark.run), "", mark)
        if not self.dry_run:
            ref.etag = await self.s3.put(ref.key, mark.encode(), {}, if_none_match=True)
        if self.grace == 0:
            await self._sweep([ref])

    # --- housekeeping -------------------------------------------------------------------------
    async def _housekeeping(self, marks: list[MarkRef], keeps_before: dict[str, list[str]]) -> None:
        now = self.clock.wall()
        runs = {m.mark.run for m in marks}
        for m in marks:
            if m.mark.state == SWEPT and (m.mark.swept_at or 0) + RETENTION < now:
                await self._delete_prefix(keep_prefix(self.prefix, m.mark.run))
                await self.s3.delete(m.key)
                self.report.removed_marks += 1
        for run, keys in keeps_before.items():
            if run not in runs:  # its mark is gone: nothing will read these
                for k in keys:
                    await self.s3.delete(k)

    async def _delete_prefix(self, prefix: str) -> None:
        objs = await list_objects(self.s3, prefix)
        async with trio.open_nursery() as nursery:
            for o in objs:
                nursery.start_soon(self.s3.delete, o.key)


def _sizes(lay: Layout) -> dict[str, int]:
    return {d: info.size for d, info in lay.blobs.items()}
