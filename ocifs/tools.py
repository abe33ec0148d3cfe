"""``ocifs ls``, ``ocifs gc`` and ``ocifs fsck``: layout maintenance on the bucket itself.

No mount needed: these read and delete objects with the same S3 client the mount uses, so
they work from any machine with credentials (a cron job, a CI cleanup step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from typing import Any, TextIO

import trio

from ocifs import store
from ocifs.config import Config
from ocifs.oci import Layout, group_layouts, reachable, tags_of
from ocifs.s3 import S3
from ocifs.store import ObjectInfo

log = logging.getLogger(__name__)


class Progress:
    """One status line on stderr at most once a second (only when stderr is a terminal or
    the run is long enough to need it)."""

    def __init__(self, what: str, total: int, out: TextIO = sys.stderr) -> None:
        self.what, self.total, self.out = what, total, out
        self.done = 0
        self.bytes = 0
        self._last = time.monotonic()
        self._started = self._last

    def step(self, nbytes: int = 0) -> None:
        self.done += 1
        self.bytes += nbytes
        now = time.monotonic()
        if now - self._last >= 1.0:
            self._last = now
            self.out.write(f"{self.what}: {self.done}/{self.total} ({self.bytes / 2**20:,.0f} MiB)\n")
            self.out.flush()


async def _list_all(s3: S3, prefix: str) -> list[ObjectInfo]:
    out: list[ObjectInfo] = []
    token: str | None = None
    while True:
        page = await s3.list_page(prefix, token, delimiter=None)
        out.extend(page.objects)
        token = page.next_token
        if token is None:
            return out


async def _load(s3: S3, info: ObjectInfo) -> bytes:
    return (await s3.get(info.key))[1]


async def _index_doc(s3: S3, lay: Layout) -> dict[str, Any] | None:
    if lay.index is None:
        return None
    try:
        doc = json.loads(await _load(s3, lay.index))
    except (ValueError, store.NotFound):
        return None
    return doc if isinstance(doc, dict) else None


async def _layouts(s3: S3, cfg: Config) -> list[Layout]:
    return group_layouts(cfg.prefix, await _list_all(s3, cfg.prefix))


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
        for lay in await _layouts(s3, cfg):
            doc = await _index_doc(s3, lay)
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
        out.write(f"{r['repo']}: {tags}  ({r['blobs']} blobs, {r['bytes'] / 2**20:,.1f} MiB){bad}\n")
    return 0


# --- gc -------------------------------------------------------------------------------------
@dataclasses.dataclass
class GcResult:
    deleted: list[ObjectInfo]
    kept_young: int
    skipped_layouts: list[str]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.deleted)


def gc(cfg: Config, grace: float, dry_run: bool, out: TextIO = sys.stdout) -> int:
    """Delete blobs no tag, manifest, index, subject or referrer reaches (older than grace)."""

    async def go(s3: S3) -> GcResult:
        now = time.time()
        res = GcResult([], 0, [])
        for lay in await _layouts(s3, cfg):
            doc = await _index_doc(s3, lay)
            if doc is None:
                res.skipped_layouts.append(lay.name)  # never guess: no index, no gc
                continue
            seen, _ = await reachable(lay, doc, lambda info: _load(s3, info))
            for dig, info in sorted(lay.blobs.items()):
                if dig in seen:
                    continue
                if now - info.mtime < grace:
                    res.kept_young += 1
                    continue
                res.deleted.append(info)
        if not dry_run:
            async with trio.open_nursery() as nursery:
                for info in res.deleted:
                    nursery.start_soon(s3.delete, info.key)
        return res

    res = _run(cfg, go)
    verb = "would delete" if dry_run else "deleted"
    for o in res.deleted:
        out.write(f"{verb} {o.key} ({o.size} bytes)\n")
    for name in res.skipped_layouts:
        out.write(f"skipped {name}: index.json missing or invalid\n")
    out.write(
        f"gc: {verb} {len(res.deleted)} unreachable blob(s), {res.bytes / 2**20:,.1f} MiB; "
        f"kept {res.kept_young} younger than the {grace:g} s grace period\n"
    )
    return 0


# --- fsck -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
    kind: str  # corrupt | dangling | leftover | multipart | invalid-index
    key: str
    detail: str
    repairable: bool
    upload_id: str | None = None


def fsck(cfg: Config, grace: float, repair: bool, out: TextIO = sys.stdout) -> int:
    """Check every blob's digest, references, leftovers and incomplete uploads."""

    async def go(s3: S3) -> list[Problem]:
        problems: list[Problem] = []
        now = time.time()
        layouts = await _layouts(s3, cfg)
        total = sum(len(lay.blobs) for lay in layouts)
        progress = Progress("fsck: blobs verified", total)
        for lay in layouts:
            doc = await _index_doc(s3, lay)
            if doc is None:
                problems.append(Problem("invalid-index", lay.root + "index.json", "missing or not JSON", False))
            else:
                _, missing = await reachable(lay, doc, lambda info: _load(s3, info))
                for dig in sorted(missing):
                    problems.append(Problem("dangling", f"{lay.root}blobs/{dig.replace(':', '/')}", "referenced but missing", False))
            async with trio.open_nursery() as nursery:
                for dig, info in lay.blobs.items():
                    nursery.start_soon(_check_blob, s3, dig, info, problems, progress)
            for o in lay.leftovers:
                if now - o.mtime >= grace:
                    problems.append(Problem("leftover", o.key, f"temporary file, {(now - o.mtime) / 3600:.1f} h old", True))
        for up in await s3.list_multipart(cfg.prefix):
            if now - up.initiated >= grace:
                problems.append(Problem("multipart", up.key, f"incomplete multipart upload {up.upload_id}", True, up.upload_id))
        if repair:
            for p in problems:
                if not p.repairable:
                    continue
                if p.kind == "multipart":
                    assert p.upload_id is not None
                    await s3.abort_multipart(p.key, p.upload_id)
                else:
                    await s3.delete(p.key)
        return problems

    problems = _run(cfg, go)
    for p in problems:
        fixed = " [removed]" if repair and p.repairable else ""
        out.write(f"{p.kind}: {p.key}: {p.detail}{fixed}\n")
    unfixed = [p for p in problems if not (repair and p.repairable)]
    out.write(f"fsck: {len(problems)} problem(s), {len(problems) - len(unfixed)} repaired\n")
    return 1 if unfixed else 0


async def _check_blob(s3: S3, dig: str, info: ObjectInfo, problems: list[Problem], progress: Progress) -> None:
    alg, _, want = dig.partition(":")
    h = hashlib.new(alg)
    chunk = 8 * 1024 * 1024
    for start in range(0, info.size, chunk):
        h.update(await s3.get_range(info.key, start, min(start + chunk, info.size)))
    got = h.hexdigest()
    if got != want:
        # A corrupt blob is never useful, and while it exists a re-push skips it (oras stats
        # before pushing): removing it is the repair.
        problems.append(Problem("corrupt", info.key, f"content hashes to {alg}:{got}", True))
    progress.step(info.size)
