"""``ocifs ls``, ``ocifs gc`` and ``ocifs fsck``: layout maintenance on the bucket itself.

No mount needed: these read and delete objects with the same S3 client the mount uses, so
they work from any machine with credentials (a cron job, a CI cleanup step). Their stdout is
one line per finding plus a summary line (parseable); progress goes to stderr, and only when
stderr is a terminal. The gc protocol itself is :mod:`ocifs.gc` and :mod:`ocifs.gcmarks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from typing import Any, TextIO

import trio

from ocifs import store
from ocifs.config import Config
from ocifs.gc import Collector, GcReport
from ocifs.oci import Layout, StoreBlobs, index_doc, is_internal, load_layouts, reachable, tags_of
from ocifs.s3 import S3
from ocifs.store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MiB = 2**20
CHECK_CONCURRENCY = 8  # blobs hashed at once by fsck


class Progress:
    """A status line on stderr, rewritten in place at most every ``interval`` seconds.

    Only on a terminal: in a pipe, a file or cron mail it would be noise between parseable
    lines, so it writes nothing there.
    """

    def __init__(self, out: TextIO = sys.stderr, interval: float = 0.2, enabled: bool | None = None) -> None:
        self.out = out
        self.interval = interval
        self.enabled = _isatty(out) if enabled is None else enabled
        self.what, self.total, self.done, self.bytes = "", None, 0, 0
        self._last = 0.0
        self._drawn = False

    def phase(self, what: str, total: int | None = None) -> None:
        self.what, self.total, self.done, self.bytes = what, total, 0, 0
        self._draw(force=True)

    def step(self, nbytes: int = 0) -> None:
        self.done += 1
        self.bytes += nbytes
        self._draw()

    def close(self) -> None:
        """Erase the line, so what follows starts on a clean one."""
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        line = f"{self.what}: {count}" + (f" ({self.bytes / MiB:,.0f} MiB)" if self.bytes else "")
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.out.write("\r" + line[:width] + "\x1b[K")
        self.out.flush()
        self._drawn = True


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _run(cfg: Config, fn: Any) -> Any:
    """Run ``fn(s3)`` under trio with an open client; OcifsError propagates as one line."""
    s3 = S3(cfg)
    try:
        s3.open_blocking()
        s3.check_bucket_blocking()

        async def main() -> Any:
            s3.limiter = trio.CapacityLimiter(cfg.concurrency)
            return await fn(s3)

        return trio.run(main)
    finally:
        s3.close_blocking()


# --- ls -------------------------------------------------------------------------------------
def ls(cfg: Config, as_json: bool, out: TextIO = sys.stdout) -> int:
    async def go(s3: S3) -> list[dict[str, Any]]:
        result = []
        for lay in await load_layouts(s3, cfg.prefix):
            doc = await index_doc(s3, lay)
            tags = tags_of(doc) if doc else []
            result.append(
                {
                    "repo": lay.name,
                    "tags": [{"tag": t, "digest": d} for t, d in tags],
                    "manifests": len((doc or {}).get("manifests", []) or []),
                    "blobs": len(lay.blobs),
                    "bytes": sum(b.size for b in lay.blobs.values()),
                    "valid": doc is not None,
                }
            )
        return result

    repos = _run(cfg, go)
    if as_json:
        json.dump(repos, out, indent=2)
        out.write("\n")
        return 0
    for r in repos:
        tags = ", ".join(t["tag"] for t in r["tags"]) or "(no tags)"
        bad = "" if r["valid"] else "  [index.json missing or invalid]"
        out.write(f"{r['repo']}: {tags}  ({r['blobs']} blobs, {r['bytes'] / MiB:,.1f} MiB){bad}\n")
    return 0


# --- gc -------------------------------------------------------------------------------------
def gc(cfg: Config, grace: float, dry_run: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Sweep the marks whose grace has passed, then mark what is unreachable now."""
    progress = Progress(err)

    async def go(s3: S3) -> GcReport:
        try:
            return await Collector(s3, cfg.prefix, grace, dry_run, progress).run()
        finally:
            progress.close()

    write_gc_report(_run(cfg, go), grace, dry_run, out)
    return 0


def write_gc_report(r: GcReport, grace: float, dry_run: bool, out: TextIO) -> None:
    """One line per blob (deleted / spared / condemned), then one summary line."""

    def verb(done: str, would: str) -> str:
        return would if dry_run else done

    for o in r.deleted:
        out.write(f"{verb('deleted', 'would delete')} {o.key} ({o.size} bytes)\n")
    for key, reason in r.spared:
        out.write(f"spared {key}: {reason}\n")
    for o in r.condemned:
        out.write(f"{verb('condemned', 'would condemn')} {o.key} ({o.size} bytes)\n")
    for name in r.skipped_layouts:
        out.write(f"skipped {name}: index.json missing or invalid\n")
    for run in r.busy:
        out.write(f"busy {run}: another gc is sweeping it\n")
    for run in r.incomplete:
        out.write(f"incomplete {run}: the sweep's lease ran out; the next gc run sweeps the rest\n")
    deleted_mib = sum(o.size for o in r.deleted) / MiB
    condemned_mib = sum(o.size for o in r.condemned) / MiB
    mark = f" in mark {r.run}" if r.run and not dry_run else ""
    out.write(
        f"gc: {verb('swept', 'would sweep')} {len(r.swept)} mark(s): "
        f"{verb('deleted', 'would delete')} {len(r.deleted)} blob(s), {deleted_mib:,.1f} MiB, spared {len(r.spared)}; "
        f"{verb('condemned', 'would condemn')} {len(r.condemned)} unreachable blob(s), {condemned_mib:,.1f} MiB{mark} "
        f"(swept after the {grace:g} s grace period); {len(r.pending)} mark(s) pending\n"
    )


# --- fsck -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
    kind: str  # corrupt | dangling | leftover | multipart | invalid-index
    key: str
    detail: str
    repairable: bool
    upload_id: str | None = None


def fsck(cfg: Config, grace: float, repair: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Check every blob's digest, references, leftovers and incomplete uploads."""
    progress = Progress(err)

    async def go(s3: S3) -> list[Problem]:
        try:
            problems = await _fsck(s3, cfg.prefix, grace, progress)
            if repair:
                await _repair(s3, problems)
            return problems
        finally:
            progress.close()

    problems = _run(cfg, go)
    for p in problems:
        fixed = " [removed]" if repair and p.repairable else ""
        out.write(f"{p.kind}: {p.key}: {p.detail}{fixed}\n")
    unfixed = [p for p in problems if not (repair and p.repairable)]
    out.write(f"fsck: {len(problems)} problem(s), {len(problems) - len(unfixed)} repaired\n")
    return 1 if unfixed else 0


async def _fsck(s3: ObjectStore, prefix: str, grace: float, progress: Progress) -> list[Problem]:
    problems: list[Problem] = []
    now = time.time()
    progress.phase("fsck: listing")
    layouts = await load_layouts(s3, prefix)
    progress.phase("fsck: reading manifests")
    for lay in layouts:
        problems += await _references(s3, lay, progress)
        for o in lay.leftovers:
            if now - o.mtime >= grace:
                problems.append(Problem("leftover", o.key, f"temporary file, {(now - o.mtime) / 3600:.1f} h old", True))
    progress.phase("fsck: blobs verified", sum(len(lay.blobs) for lay in layouts))
    limiter = trio.CapacityLimiter(CHECK_CONCURRENCY)
    async with trio.open_nursery() as nursery:
        for lay in layouts:
            for dig, info in lay.blobs.items():
                nursery.start_soon(_check_blob, s3, dig, info, problems, progress, limiter)
    progress.phase("fsck: multipart uploads")
    problems += await _stale_uploads(s3, prefix, grace, now)
    return problems


async def _references(s3: ObjectStore, lay: Layout, progress: Progress) -> list[Problem]:
    doc = await index_doc(s3, lay)
    if doc is None:
        return [Problem("invalid-index", f"{lay.prefix}{lay.root}index.json", "missing or not JSON", False)]
    blobs = StoreBlobs(s3, lay, on_read=progress.step)
    reach = await reachable(doc, blobs, {d: i.size for d, i in lay.blobs.items()})
    # reachable() asked S3 about every digest the listing lacked: these are really missing.
    return [
        Problem("dangling", lay.blob_key(dig) or f"{lay.prefix}{lay.root}{dig}", "referenced but missing", False)
        for dig in sorted(reach.missing)
    ]


async def _stale_uploads(s3: ObjectStore, prefix: str, grace: float, now: float) -> list[Problem]:
    """Incomplete multipart uploads whose last activity (newest part, else initiation) is
    older than the grace period: a slow upload whose parts still arrive is left alone."""
    out = []
    # Bucket-wide, filtered here: MinIO answers a prefix only if it is an exact key.
    for up in await s3.list_multipart(""):
        if not up.key.startswith(prefix) or is_internal(up.key[len(prefix) :]):
            continue
        try:
            parts = await s3.list_parts(up.key, up.upload_id)
        except (store.NoSuchUpload, store.NotFound):
            continue  # completed or aborted meanwhile
        last = max([p.last_modified for p in parts], default=up.initiated)
        if now - last >= grace:
            idle = (now - last) / 3600
            out.append(Problem("multipart", up.key, f"incomplete multipart upload {up.upload_id}, idle {idle:.1f} h", True, up.upload_id))
    return out


async def _repair(s3: ObjectStore, problems: list[Problem]) -> None:
    for p in problems:
        if not p.repairable:
            continue
        if p.kind == "multipart":
            assert p.upload_id is not None
            await s3.abort_multipart(p.key, p.upload_id)
        else:
            await s3.delete(p.key)


async def _check_blob(
    s3: ObjectStore, dig: str, info: ObjectInfo, problems: list[Problem], progress: Progress, limiter: trio.CapacityLimiter
) -> None:
    alg, _, want = dig.partition(":")
    h = hashlib.new(alg)
    chunk = 8 * MiB
    async with limiter:
        try:
            for start in range(0, info.size, chunk):
                h.update(await s3.get_range(info.key, start, min(start + chunk, info.size), info.etag or None))
        except (store.NotFound, store.PreconditionFailed):
            return  # deleted or replaced since the listing: nothing to judge
    got = h.hexdigest()
    if got != want:
        # A corrupt blob is never useful, and while it exists a re-push skips it (oras stats
        # before pushing): removing it is the repair.
        problems.append(Problem("corrupt", info.key, f"content hashes to {alg}:{got}", True))
    progress.step(info.size)
