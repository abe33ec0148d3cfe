"""gc marks and keeps: how ``ocifs gc`` and the mounts agree on what may be deleted.

``ocifs gc`` never deletes a blob in the run that finds it unreachable. It *condemns* it in a
mark object, and a later run sweeps the mark once its grace period has passed. A mount whose
client checks that a condemned blob exists (oras, skopeo: ``stat blobs/<alg>/<hex>`` before
reusing a blob) or that publishes one first writes a *keep* object, and the sweep spares every
kept blob and whatever a kept manifest reaches. Keys, for a gc run on ``s3://B/<P>``::

    <P>.ocifs/gc/marks/<run>.json            the mark: run, time, grace, state, condemned keys + ETags
    <P>.ocifs/gc/keep/<run>/<sha256 of key>  a keep: some mount answered "exists" for that key

A mark goes ``pending`` -> ``sweeping`` -> ``swept``. The sweep's switch to ``sweeping``
(a conditional PUT) and the mount's keep form a handshake: a mount writes its keep, *then*
HEADs the mark; a sweeper switches the mark, *then* lists the keeps. S3 is strongly consistent,
so either the mount still sees ``pending`` (and the sweeper's listing has the keep) or it sees
``sweeping`` and waits for the sweep to end before it answers (then asks S3 again). A
``swept`` mark stays for :data:`RETENTION` so that every mount learns that blobs may have gone
and asks S3 once more before trusting what it knew. README, "gc and concurrent pushes", says
what this makes safe.

This module holds the shared format (:class:`Mark`, the key functions) and the mount's half
(:class:`GcMarks`, :class:`GuardedStore`); the gc run is :mod:`ocifs.gc`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import trio

from ocifs import store
from ocifs.store import ObjectStore

log = logging.getLogger(__name__)

GC_DIR = ".ocifs/gc/"
PENDING, SWEEPING, SWEPT = "pending", "sweeping", "swept"
# A sweeper deletes nothing once this long has passed since it switched a mark to sweeping;
# after LEASE + CLOCK_SKEW the sweep counts as abandoned (a later gc run takes it over, and a
# mount stops waiting for it). Bounds how long a mount's lookup may wait for a sweep.
LEASE = 120.0
# How far hosts' clocks may disagree (seconds): NTP keeps them far closer.
CLOCK_SKEW = 30.0
# A swept mark is kept this long, so that a mount that refreshes its view at least every
# RETENTION / 2 seconds sees every sweep.
RETENTION = 3600.0
# Longest a mount's lookup waits on gc marks (refresh, keep, a sweep in progress).
MAX_WAIT = LEASE + CLOCK_SKEW + 30.0
_BLOB_KEY = re.compile(r"^(.*/)?blobs/(?:sha256/[0-9a-f]{64}|sha512/[0-9a-f]{128})$")
_BLOB_DIR_KEY = re.compile(r"^(.*/)?blobs/(?:sha256|sha512)$")


# --- the shared format ----------------------------------------------------------------------
def marks_prefix(prefix: str) -> str:
    return f"{prefix}{GC_DIR}marks/"


def mark_key(prefix: str, run: str) -> str:
    return f"{marks_prefix(prefix)}{run}.json"


def keep_prefix(prefix: str, run: str) -> str:
    return f"{prefix}{GC_DIR}keep/{run}/"


def keep_name(key: str) -> str:
    """The name of a key's keep object: fixed length whatever the key (and no blob path)."""
    return hashlib.sha256(key.encode()).hexdigest()


def keep_key(prefix: str, run: str, key: str) -> str:
    return keep_prefix(prefix, run) + keep_name(key)


def new_run_id(now: float) -> str:
    """Sortable by time, unique across hosts."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + uuid.uuid4().hex[:8]


def watched_prefixes(key: str) -> list[str] | None:
    """Where marks that may condemn blob ``key`` live: a gc may run on the bucket, on any
    directory above the layout, or on the layout itself. None if ``key`` is no blob."""
    m = _BLOB_KEY.match(key)
    return None if m is None else _prefixes_above(m.group(1) or "")


def _prefixes_above(root: str) -> list[str]:
    """"" and every directory prefix down to the layout ``root`` ("a/b/" -> "", "a/", "a/b/")."""
    parts = root.split("/")[:-1]
    return [""] + ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


@dataclasses.dataclass
class Mark:
    """One gc run's condemned blobs (full key -> ETag when marked) and the sweep's state."""

    run: str
    time: float  # when the run marked (wall clock of the marking host)
    grace: float
    condemned: dict[str, str]
    state: str = PENDING
    sweep_started: float | None = None
    swept_at: float | None = None
    deleted: int = 0
    host: str = ""

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "ocifs_gc_mark": 1,
            "run": self.run,
            "time": self.time,
            "grace": self.grace,
            "state": self.state,
            "host": self.host,
        }
        if self.state == SWEEPING:
            doc["sweep_started"] = self.sweep_started
            doc["lease"] = LEASE
        if self.state == SWEPT:  # the list is no longer needed: keep the tombstone small
            doc["swept_at"] = self.swept_at
            doc["deleted"] = self.deleted
        else:
            doc["condemned"] = [[k, e] for k, e in sorted(self.condemned.items())]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Mark:
        """Parse a mark; ValueError if it is not one."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("ocifs_gc_mark") != 1:
                raise ValueError("not an ocifs gc mark")
            state = doc["state"]
            if state not in (PENDING, SWEEPING, SWEPT):
                raise ValueError(f"unknown state {state!r}")
            return cls(
                run=str(doc["run"]),
                time=float(doc["time"]),
                grace=float(doc["grace"]),
                condemned={str(k): str(e) for k, e in doc.get("condemned", [])},
                state=state,
                sweep_started=float(doc["sweep_started"]) if state == SWEEPING else None,
                swept_at=float(doc["swept_at"]) if state == SWEPT else None,
                deleted=int(doc.get("deleted", 0)),
                host=str(doc.get("host", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed gc mark: {exc}") from None

    def abandoned(self, now: float) -> bool:
        """A sweep that can no longer delete anything (its lease ran out, clocks allowing)."""
        return self.state == SWEEPING and self.sweep_started is not None and now > self.sweep_started + LEASE + CLOCK_SKEW

    def due(self, now: float, grace: float) -> bool:
        """Whether a gc run with ``grace`` may sweep this mark now: its grace (and the run's)
        has passed since it was marked, or its sweep was abandoned."""
        if self.state == PENDING:
            return now >= self.time + max(self.grace, grace)
        return self.abandoned(now)


# --- the mount's half -----------------------------------------------------------------------
@dataclasses.dataclass
class Clock:
    """Wall clock (compared with marks' times, written by other hosts) and monotonic clock
    (compared with the namespace's ``Node.fetched``). Replaced in unit tests."""

    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic


@dataclasses.dataclass
class _Seen:
    """A mark as this mount last read it."""

    key: str
    prefix: str
    etag: str
    mark: Mark
    written: set[str] = dataclasses.field(default_factory=set)  # keys whose keep we PUT
    kept: set[str] = dataclasses.field(default_factory=set)  # ... and saw the mark still pending after


@dataclasses.dataclass
class _View:
    """The marks under one prefix, as of the last LIST."""

    fetched: float = -math.inf  # monotonic start of the last LIST
    marks: dict[str, _Seen] = dataclasses.field(default_factory=dict)
    # Monotonic time by which this mount had seen that a sweep may have deleted blobs under
    # the prefix: what it learnt about their existence before then is to be asked again.
    bump: float = -math.inf
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)


class GcMarks:
    """A mount's cached view of pending gc marks, and the keeps it owes them.

    Call :meth:`keep_if_condemned` before answering that a blob exists (lookup) and before
    publishing one. It costs nothing but a LIST of each watched marks prefix at most every
    ``ttl`` seconds (``watched_prefixes``: normally empty), and S3 requests only for a
    condemned key: one keep PUT and one HEAD of the mark, once per run and key.
    """

    def __init__(
        self,
        s3: ObjectStore,
        ttl: float,
        *,
        slack: float = 75.0,
        lookback: float | None = None,
        max_answered: int = 65536,
        clock: Clock | None = None,
    ) -> None:
        self.s3 = s3
        self.ttl = ttl
        # What a node's ``fetched`` may lag behind the S3 request that confirmed it (a HEAD's
        # last attempt: 10 s connect + 60 s read timeouts, s3.py; a listing: the metadata TTL).
        self.slack = slack
        # Keys this mount said exist this recently get a keep when it first sees a mark: a
        # client may have checked one while the view (ttl) or the kernel's entry (ttl) was
        # older than the mark. Longer would keep every blob a mount touched from gc.
        self.lookback = 2 * ttl + 10.0 if lookback is None else lookback
        self.max_answered = max_answered
        self.clock = clock or Clock()
        self._born = self.clock.mono()
        self._views: dict[str, _View] = {}
        self._answered: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._rechecked: dict[str, float] = {}
        self._bad: set[tuple[str, str]] = set()  # (key, etag) of marks we could not parse

    # --- the one public call ------------------------------------------------------------------
    async def keep_if_condemned(self, key: str, confirmed: float | None = None) -> bool:
        """Keep ``key`` from every pending gc mark that condemns it, waiting out a sweep in
        progress. Returns whether what S3 said about ``key`` at monotonic time ``confirmed``
        (``Node.fetched``) still holds: False when a sweep may have deleted it since, and the
        caller must ask S3 again before answering. ``confirmed=None``: nothing known (publish).
        Raises :class:`ocifs.store.StoreError` when it cannot make the key safe."""
        prefixes = watched_prefixes(key)
        if prefixes is None:
            return True
        self._note_answered(key)
        with trio.move_on_after(MAX_WAIT) as scope:
            if len(prefixes) > 1:  # the bucket's and the layout's: one round trip, not two
                await self._warm_all(prefixes)
            for p in prefixes:
                view = await self._view(p)
                for seen in list(view.marks.values()):
                    if key in seen.mark.condemned and key not in seen.kept:
                        await self._keep(view, seen, key)
        if scope.cancelled_caught:
            raise store.Unavailable(f"{key}: gc marks did not settle within {MAX_WAIT:.0f} s; not answering")
        return self._still_valid(key, confirmed, prefixes)

    async def prefetch_for_dir(self, key: str) -> None:
        """Refresh the views watching the blobs of directory ``key`` (``<layout>/blobs/<alg>``,
        anything else is ignored) while it is being looked up: the first blob lookup of a cold
        pull then waits on no LIST of its own. Errors are left to the blob lookups."""
        m = _BLOB_DIR_KEY.match(key)
        if m is not None:
            await self.prefetch_for_layout(m.group(1) or "")

    async def prefetch_for_layout(self, root: str) -> None:
        """Refresh the views watching the blobs of the layout at key prefix ``root`` ("app/"),
        e.g. while a client reads its index.json. Errors are left to the blob lookups."""
        await self._warm_all(_prefixes_above(root))

    # --- view ---------------------------------------------------------------------------------
    async def _warm_all(self, prefixes: list[str]) -> None:
        """Refresh these views at once, ahead of whoever uses them. A failure is that user's
        to report (it asks again), so no error leaves here wrapped in a task group."""

        async def warm(prefix: str) -> None:
            with contextlib.suppress(store.StoreError):
                await self._view(prefix)

        async with trio.open_nursery() as nursery:
            for p in prefixes:
                nursery.start_soon(warm, p)

    async def _view(self, prefix: str) -> _View:
        view = self._views.setdefault(prefix, _View())
        if self.clock.mono() - view.fetched < self.ttl:
            return view
        async with view.lock:  # one refresh at a time; the others use its result
            if self.clock.mono() - view.fetched >= self.ttl:
                await self._refresh(prefix, view)
        return view

    async def _refresh(self, prefix: str, view: _View) -> None:
        started = self.clock.mono()
        listed: dict[str, str] = {}
        token: str | None = None
        while True:
            page = await self.s3.list_page(marks_prefix(prefix), token, delimiter=None)
            listed.update((o.key, o.etag) for o in page.objects if o.key.endswith(".json"))
            token = page.next_token
            if token is None:
                break
        last = view.fetched if view.fetched > -math.inf else self._born
        if started - last > RETENTION / 2:
            # Long enough without a look that a whole mark life (swept tombstone included)
            # may have passed unseen.
            self._bump(view)
        for k in [k for k in view.marks if k not in listed]:
            del view.marks[k]
            self._bump(view)  # swept, and its tombstone already cleaned up
        for k, etag in listed.items():
            seen = view.marks.get(k)
            if (seen is None or seen.etag != etag) and (k, etag) not in self._bad:
                await self._reread(view, prefix, k)
        view.fetched = started

    async def _reread(self, view: _View, prefix: str, key: str) -> None:
        """GET a new or changed mark and take note of what its change means."""
        try:
            etag, data = await self.s3.get(key)
        except store.NotFound:
            if view.marks.pop(key, None) is not None:
                self._bump(view)
            return
        try:
            mark = Mark.decode(data)
        except ValueError as exc:
            self._bad.add((key, etag))
            log.warning("ignoring %s: %s", key, exc)
            return
        old = view.marks.get(key)
        if mark.state == SWEPT or (old is not None and old.mark.state == SWEEPING):
            self._bump(view)  # a sweep ended (or was redone): blobs may be gone
        if old is None:
            view.marks[key] = seen = _Seen(key, prefix, etag, mark)
            if mark.state == PENDING:
                await self._keep_recent(view, seen)
        else:
            old.etag, old.mark = etag, mark

    def _bump(self, view: _View) -> None:
        view.bump = self.clock.mono()

    # --- keeps --------------------------------------------------------------------------------
    async def _keep(self, view: _View, seen: _Seen, key: str) -> None:
        """Return once ``key`` is safe from ``seen``'s sweep: kept in time, or swept already."""
        while key not in seen.kept and seen.mark.state != SWEPT and view.marks.get(seen.key) is seen:
            if seen.mark.state == PENDING or seen.mark.abandoned(self.clock.wall()):
                if seen.mark.state == SWEEPING:
                    self._bump(view)  # an abandoned sweep may have deleted some of its blobs
                await self._put_keeps(seen, [key])
                if await self._unchanged(view, seen):
                    seen.kept.add(key)
            else:
                await self._await_change(view, seen)

    async def _keep_recent(self, view: _View, seen: _Seen) -> None:
        """A new mark: keep what this mount told clients exists in the last ``lookback``
        seconds (a push may have checked a blob before the mark and tag it after)."""
        since = self.clock.mono() - self.lookback
        keys = [k for k, t in self._answered.items() if t >= since and k in seen.mark.condemned]
        if keys:
            await self._put_keeps(seen, keys)
            if await self._unchanged(view, seen):
                seen.kept.update(keys)

    async def _put_keeps(self, seen: _Seen, keys: list[str]) -> None:
        async def put(k: str) -> None:
            await self.s3.put(keep_key(seen.prefix, seen.mark.run, k), k.encode(), {})
            seen.written.add(k)

        todo = [k for k in keys if k not in seen.written]
        async with trio.open_nursery() as nursery:
            for k in todo:
                nursery.start_soon(put, k)
        if todo:
            log.info("kept %d blob(s) from gc run %s", len(todo), seen.mark.run)

    async def _unchanged(self, view: _View, seen: _Seen) -> bool:
        """HEAD the mark after writing keeps: still the version we know (still pending)?"""
        try:
            info = await self.s3.head(seen.key)
        except store.NotFound:
            view.marks.pop(seen.key, None)
            self._bump(view)
            return False
        if info.etag == seen.etag:
            return True
        await self._reread(view, seen.prefix, seen.key)
        return False

    async def _await_change(self, view: _View, seen: _Seen) -> None:
        """Poll a mark being swept until the sweep ends or is abandoned (bounded by LEASE)."""
        delay = 0.25
        while not seen.mark.abandoned(self.clock.wall()):
            await trio.sleep(delay)
            delay = min(2.0, delay * 2)
            if not await self._unchanged(view, seen):
                return

    # --- what the caller knew -----------------------------------------------------------------
    def _still_valid(self, key: str, confirmed: float | None, prefixes: list[str]) -> bool:
        bump = max(self._views[p].bump for p in prefixes)
        if confirmed is None or bump == -math.inf:
            return True
        if self._rechecked.get(key, -math.inf) >= bump or confirmed >= bump + self.slack:
            return True
        if len(self._rechecked) >= self.max_answered:
            self._rechecked.clear()  # at worst one more HEAD per key
        self._rechecked[key] = self.clock.mono()  # the caller's HEAD starts after this
        return False

    def _note_answered(self, key: str) -> None:
        self._answered[key] = self.clock.mono()
        self._answered.move_to_end(key)
        while len(self._answered) > self.max_answered:
            self._answered.popitem(last=False)


class GuardedStore:
    """The mount's :class:`ObjectStore` with a keep before every publish of a blob key.

    Publishing a blob a mark condemns (a client re-uploading it: equal content gives an equal
    ETag, so the sweep could not tell) must be kept like a lookup; wrapping the store catches
    every way the mount publishes (PUT, CompleteMultipartUpload, CopyObject) in one place.
    """

    def __init__(self, inner: ObjectStore, marks: GcMarks) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_marks", marks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    async def put(self, key: str, body: Any, meta: dict[str, str], if_match: str | None = None, if_none_match: bool = False) -> str:
        await self._marks.keep_if_condemned(key)
        return await self._inner.put(key, body, meta, if_match=if_match, if_none_match=if_none_match)

    async def copy(self, src: str, dst: str, meta: dict[str, str], src_etag: str | None = None) -> str:
        await self._marks.keep_if_condemned(dst)
        return await self._inner.copy(src, dst, meta, src_etag=src_etag)

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        await self._marks.keep_if_condemned(key)
        return await self._inner.complete_multipart(key, upload_id, parts)
