"""Directory marker objects (``dir/``), kept only where a directory would otherwise vanish.

S3 has no directories: a prefix exists while some key is below it. An empty directory (oras'
``ingest/``, zot's ``.uploads/``) must survive a remount, so it gets a zero-byte marker
object. A marker beside real keys is noise other S3 readers must skip (distribution's S3
driver, which zot uses, lists it as a file of its own directory), so markers are removed as
soon as a directory holds something, and written only when it is empty.

Markers are reconciled in the background, ``delay`` seconds after the last change: ``mkdir
-p blobs/sha256`` followed at once by a file in it costs no marker at all. ``settle()``
(unmount) applies everything still pending.
"""

from __future__ import annotations

import logging
import trio

from ocifs import errors, store
from ocifs.layout import parent_of
from ocifs.namespace import Namespace
from ocifs.store import ObjectStore
from ocifs.tasks import TaskGroup

log = logging.getLogger(__name__)

# Seconds between a directory change and the marker PUT/DELETE it implies. Long enough for
# `mkdir -p x/y && write x/y/f` to need no marker, short enough that an empty directory is
# durable almost at once.
RECONCILE_DELAY = 1.0


class Markers:
    def __init__(self, s3: ObjectStore, ns: Namespace, delay: float = RECONCILE_DELAY) -> None:
        self.s3 = s3
        self.ns = ns
        self.group: TaskGroup | None = None  # the reconciler tasks; set when the mount starts
        self.delay = delay
        self._want: dict[str, bool] = {}  # directory -> should it have a marker
        self._busy: dict[str, trio.Event] = {}  # directories being reconciled
        self._waiting: set[str] = set()  # of those, the ones still in their delay (no S3 call yet)
        self._failed: set[str] = set()

    # --- what happened ------------------------------------------------------------------------
    def created(self, path: str) -> None:
        """mkdir: the new directory is empty (until something lands in it)."""
        self._schedule(path, True)
        self.filled(path)

    def filled(self, path: str) -> None:
        """A key now exists at ``path``: no ancestor needs its marker."""
        d = parent_of(path)
        while d:
            if d in self.ns.markers or self._want.get(d):
                self._schedule(d, False)
            d = parent_of(d)

    def emptied(self, path: str) -> None:
        """Something below ``path`` went away: keep the directory if it is now empty."""
        if path:
            self._schedule(path, True)

    async def removed(self, path: str) -> None:
        """rmdir: the marker must be gone before rmdir returns."""
        self._want.pop(path, None)
        busy = self._busy.get(path)
        if busy is not None and path not in self._waiting:
            await busy.wait()  # a PUT may be in flight: let it land before the delete
        # (a reconcile still in its delay finds nothing to do: its wish was dropped above)
        try:  # always: a marker may exist that this mount never listed
            await self.s3.delete(self.ns.dir_key(path))
        except store.NotFound:
            pass
        self.ns.markers.discard(path)

    # --- reconciling --------------------------------------------------------------------------
    def _schedule(self, path: str, present: bool) -> None:
        self._want[path] = present
        if path not in self._busy and self.group is not None:
            self._busy[path] = trio.Event()
            self.group.start_soon(self._reconcile, path)

    async def _reconcile(self, path: str) -> None:
        try:
            self._waiting.add(path)
            try:
                await trio.sleep(self.delay)
            finally:
                self._waiting.discard(path)
            while path in self._want:
                await self._apply(path, self._want.pop(path))
            self._failed.discard(path)
        except (errors.OcifsError, store.StoreError) as exc:
            log.warning("could not update the directory marker of %s: %s", path, exc)
            self._failed.add(path)
        finally:
            self._busy.pop(path).set()

    async def _apply(self, path: str, present: bool) -> None:
        key = self.ns.dir_key(path)
        if present:
            if self.ns.children_pending(path):
                return  # a file is being created there: it will be the directory's key
            page = await self.s3.list_page(key, delimiter=None, max_keys=2)
            if any(o.key != key for o in page.objects) or page.prefixes:
                return  # not empty after all
            if path not in self.ns.markers:
                await self.s3.put(key, b"", {})
                self.ns.markers.add(path)
        elif path in self.ns.markers:
            await self.s3.delete(key)
            self.ns.markers.discard(path)

    async def settle(self, timeout: float) -> None:
        """Apply every pending change now (unmount), within ``timeout`` seconds."""
        self.delay = 0
        with trio.move_on_after(timeout) as scope:
            while self._busy:
                await next(iter(self._busy.values())).wait()
        if scope.cancelled_caught or self._failed:
            lost = sorted(set(self._want) | self._failed)
            log.warning("directory markers not updated at unmount: %s", ", ".join(lost) or "(in flight)")
