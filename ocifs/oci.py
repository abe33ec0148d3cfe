"""OCI image layouts as they lie in a bucket: which exist, what they tag, what is reachable.

Used by ``ocifs ls``, ``ocifs gc`` and ``ocifs fsck``, which work on the bucket directly (no
mount needed). Reachability is computed here from an ``index.json`` and a :class:`BlobReader`,
so the walk is tested with a dict (``tests/unit/test_reachability.py``) and run on S3 by
:class:`StoreBlobs`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import trio

from ocifs import store
from ocifs.layout import blob_digest
from ocifs.store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
MAX_MANIFEST = 4 * 1024 * 1024  # manifests bigger than this are not read (registries cap at 4 MiB)
# Bytes read to decide whether a blob may be a manifest: only blobs that start like a JSON
# object are fetched whole (a manifest is one; a gzip or tar layer never starts with "{").
SNIFF_BYTES = 512
# Manifests fetched at once while walking or looking for referrers.
FETCH_CONCURRENCY = 32
# ocifs' own bookkeeping (gc marks and keeps) lives under "<prefix>.ocifs/": not a layout.
INTERNAL_DIR = ".ocifs"
# Names OCI clients use for temporary files in a layout (oras, zot, skopeo, umoci).
LEFTOVER_DIRS = ("ingest/", ".uploads/")
LEFTOVER_PREFIXES = ("oci-put-blob", ".umoci-")
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def is_internal(rel: str) -> bool:
    """Whether a key (relative to the tool's prefix) is ocifs bookkeeping, at any depth: a
    gc of ``s3://B`` must not take ``team/.ocifs/...`` (another gc's marks) for blobs."""
    return rel.startswith(INTERNAL_DIR + "/") or f"/{INTERNAL_DIR}/" in rel


@dataclasses.dataclass
class Layout:
    root: str  # key prefix of the layout relative to ``prefix``: "" or ending in "/"
    prefix: str = ""  # the tool's prefix: full keys are prefix + root + ...
    index: ObjectInfo | None = None
    oci_layout: ObjectInfo | None = None
    blobs: dict[str, ObjectInfo] = dataclasses.field(default_factory=dict)  # "sha256:<hex>" -> info
    leftovers: list[ObjectInfo] = dataclasses.field(default_factory=list)
    markers: list[ObjectInfo] = dataclasses.field(default_factory=list)  # "dir/" objects

    @property
    def name(self) -> str:
        return self.root.rstrip("/") or "."

    def blob_key(self, digest: str) -> str | None:
        """The full key of a blob, or None for a digest that cannot name one."""
        if not _DIGEST_RE.match(digest):
            return None
        return f"{self.prefix}{self.root}blobs/{digest.replace(':', '/', 1)}"

    def digest_of(self, key: str) -> str | None:
        """The digest a full key names if it is a blob of this layout."""
        rel = key[len(self.prefix) + len(self.root) :] if key.startswith(self.prefix + self.root) else None
        if rel is None or not rel.startswith("blobs/"):
            return None
        d = blob_digest(rel)
        return f"{d[0]}:{d[1]}" if d and rel.count("/") == 2 else None


def group_layouts(prefix: str, objects: list[ObjectInfo]) -> list[Layout]:
    """Find layouts (directories holding ``index.json`` or ``oci-layout``) among keys."""
    objects = [o for o in objects if not is_internal(o.key[len(prefix) :])]
    roots: dict[str, Layout] = {}
    for o in objects:
        rel = o.key[len(prefix) :]
        for fname in ("index.json", "oci-layout"):
            if rel == fname or rel.endswith("/" + fname):
                root = rel[: len(rel) - len(fname)]
                lay = roots.setdefault(root, Layout(root, prefix))
                if fname == "index.json":
                    lay.index = o
                else:
                    lay.oci_layout = o
    # Longest root first, so nested layouts (team/app inside team) claim their own keys.
    ordered = sorted(roots, key=len, reverse=True)
    for o in objects:
        rel = o.key[len(prefix) :]
        root = next((r for r in ordered if rel.startswith(r)), None)
        if root is None:
            continue
        lay = roots[root]
        sub = rel[len(root) :]
        if sub in ("index.json", "oci-layout"):
            continue
        if sub.endswith("/"):
            lay.markers.append(o)
            continue
        d = blob_digest(sub)
        if d is not None and sub.startswith("blobs/") and sub.count("/") == 2:
            lay.blobs[f"{d[0]}:{d[1]}"] = o
        elif sub.startswith(LEFTOVER_DIRS) or sub.startswith(LEFTOVER_PREFIXES):
            lay.leftovers.append(o)
    return [roots[r] for r in sorted(roots)]


def tags_of(index_doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(tag, digest) pairs of an index.json."""
    out = []
    for d in _descriptors(index_doc.get("manifests")):
        ann = d.get("annotations") or {}
        if isinstance(ann, dict) and REF_NAME in ann:
            out.append((ann[REF_NAME], d["digest"]))
    return sorted(out)


def _descriptors(items: Any) -> list[dict[str, Any]]:
    """The well-formed descriptors (dicts with a string digest) of a JSON list."""
    if not isinstance(items, list):
        return []
    return [d for d in items if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def references(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """What a manifest or index points to: (digest, whether it is a manifest to walk into).

    By position, not by mediaType: an index's ``manifests`` and a ``subject`` are manifests
    (whatever their mediaType says); ``config``, ``layers`` and an artifact manifest's
    ``blobs`` are leaves.
    """
    out = [(d["digest"], True) for d in _descriptors(doc.get("manifests"))]
    out += [(d["digest"], False) for d in _descriptors([doc.get("config")])]
    out += [(d["digest"], False) for d in _descriptors(doc.get("layers"))]
    out += [(d["digest"], False) for d in _descriptors(doc.get("blobs"))]
    out += [(d["digest"], True) for d in _descriptors([doc.get("subject")])]
    return out


def subject_of(doc: dict[str, Any] | None) -> str | None:
    """The digest a referrer manifest points at with ``subject`` (None if it has none)."""
    subject = (doc or {}).get("subject")
    return subject["digest"] if _descriptors([subject]) else None


def looks_like_json_object(head: bytes) -> bool:
    """Whether a blob's first bytes may begin a manifest (a JSON object)."""
    return head.lstrip(b" \t\r\n").startswith(b"{")


# --- reachability ---------------------------------------------------------------------------
class MissingBlob(Exception):
    """No blob with this digest exists in the layout."""


class BlobReader(Protocol):
    """How the walk reads a layout's blobs (S3 in :class:`StoreBlobs`, a dict in tests)."""

    async def manifest(self, digest: str, sniff: bool) -> dict[str, Any] | None:
        """The blob parsed as a JSON object, or None when it is not one (or is larger than
        :data:`MAX_MANIFEST`). With ``sniff``, give up (None) unless the first bytes look like
        a JSON object, so that a big layer is not downloaded. Raises :class:`MissingBlob`."""
        ...

    async def exists(self, digest: str) -> bool: ...


@dataclasses.dataclass
class Reach:
    reached: set[str]  # digests reachable from the roots (present or not)
    missing: set[str]  # reachable digests that do not exist (dangling references)


async def reachable(
    index_doc: dict[str, Any],
    blobs: BlobReader,
    listed: Mapping[str, int],
    extra_roots: Iterable[str] = (),
) -> Reach:
    """Digests reachable from ``index_doc`` (through manifests, indexes, configs, layers and
    subjects) and from ``extra_roots`` (blobs a mount kept; each may be a manifest or not),
    plus referrers: manifests among ``listed`` (digest -> size) whose subject is reachable,
    of any size up to :data:`MAX_MANIFEST`.

    A referenced manifest is read by digest even if ``listed`` does not show it: a manifest
    pushed after the listing and tagged before ``index_doc`` was read must keep its blobs.
    """
    reach = Reach(set(), set())
    roots = [(d["digest"], True, False) for d in _descriptors(index_doc.get("manifests"))]
    roots += [(d, True, True) for d in extra_roots]
    await _walk(roots, blobs, listed, reach)
    by_subject = await _referrers(blobs, listed, reach.reached)
    while True:
        new = [(r, True, False) for s, rs in by_subject.items() if s in reach.reached for r in rs if r not in reach.reached]
        if not new:
            return reach
        await _walk(new, blobs, listed, reach)


async def _walk(frontier: list[tuple[str, bool, bool]], blobs: BlobReader, listed: Mapping[str, int], reach: Reach) -> None:
    """Breadth-first from ``frontier`` (digest, is a manifest, sniff first), a level at a time
    with the level's reads in parallel."""
    limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
    while frontier:
        level: dict[str, tuple[bool, bool]] = {}
        for dig, is_manifest, sniff in frontier:
            if dig not in reach.reached and dig not in level:
                level[dig] = (is_manifest, sniff)
        reach.reached.update(level)
        found: list[tuple[str, bool, bool]] = []

        async def visit(dig: str, is_manifest: bool, sniff: bool) -> None:
            async with limiter:
                if not is_manifest:
                    if dig not in listed and not await blobs.exists(dig):
                        reach.missing.add(dig)
                    return
                try:
                    doc = await blobs.manifest(dig, sniff)
                except MissingBlob:
                    if not sniff:  # a kept blob that is gone is no dangling reference
                        reach.missing.add(dig)
                    return
            if doc is not None:
                found.extend((d, m, False) for d, m in references(doc))

        async with trio.open_nursery() as nursery:
            for dig, (is_manifest, sniff) in level.items():
                nursery.start_soon(visit, dig, is_manifest, sniff)
        frontier = found


async def _referrers(blobs: BlobReader, listed: Mapping[str, int], reached: set[str]) -> dict[str, list[str]]:
    """subject digest -> the listed, not yet reached manifests that name it as subject."""
    by_subject: dict[str, list[str]] = collections.defaultdict(list)
    limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

    async def sniff(dig: str) -> None:
        async with limiter:
            try:
                doc = await blobs.manifest(dig, sniff=True)
            except MissingBlob:  # deleted since the listing
                return
        subject = subject_of(doc)
        if subject is not None:
            by_subject[subject].append(dig)

    async with trio.open_nursery() as nursery:
        for dig, size in listed.items():
            if dig not in reached and size <= MAX_MANIFEST:
                nursery.start_soon(sniff, dig)
    return by_subject


class StoreBlobs:
    """A layout's blobs on S3, for :func:`reachable`: parsed manifests are cached, so the
    second walk of a gc run (with kept blobs as roots) costs no new reads."""

    def __init__(self, s3: ObjectStore, lay: Layout, on_read: Callable[[int], None] | None = None) -> None:
        self.s3 = s3
        self.lay = lay
        self.on_read = on_read  # progress: called with the size of each blob read whole
        self._docs: dict[str, dict[str, Any] | None] = {}
        self._sniffed: set[str] = set()  # digests whose first bytes ruled out a manifest
        self._missing: set[str] = set()
        self._sizes = {d: info.size for d, info in lay.blobs.items()}

    async def manifest(self, digest: str, sniff: bool) -> dict[str, Any] | None:
        if digest in self._missing:
            raise MissingBlob(digest)
        if digest in self._docs:
            return self._docs[digest]
        if sniff and digest in self._sniffed:
            return None
        key = self.lay.blob_key(digest)
        if key is None:
            raise MissingBlob(digest)
        try:
            size = await self._size(digest, key)
            if size > MAX_MANIFEST:
                return None
            if sniff and size > SNIFF_BYTES:
                if not looks_like_json_object(await self.s3.get_range(key, 0, SNIFF_BYTES)):
                    self._sniffed.add(digest)
                    return None
            _, data = await self.s3.get(key)
        except store.NotFound:
            self._missing.add(digest)
            raise MissingBlob(digest) from None
        if self.on_read is not None:
            self.on_read(len(data))
        doc = _parse(data)
        self._docs[digest] = doc
        return doc

    async def exists(self, digest: str) -> bool:
        key = self.lay.blob_key(digest)
        if key is None or digest in self._missing:
            return False
        try:
            await self._size(digest, key)
            return True
        except store.NotFound:
            self._missing.add(digest)
            return False

    async def _size(self, digest: str, key: str) -> int:
        if digest not in self._sizes:
            self._sizes[digest] = (await self.s3.head(key)).size
        return self._sizes[digest]


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# --- reading a bucket -----------------------------------------------------------------------
async def list_objects(s3: ObjectStore, prefix: str) -> list[ObjectInfo]:
    """Every object under ``prefix`` (all pages)."""
    out: list[ObjectInfo] = []
    token: str | None = None
    while True:
        page = await s3.list_page(prefix, token, delimiter=None)
        out.extend(page.objects)
        token = page.next_token
        if token is None:
            return out


async def load_layouts(s3: ObjectStore, prefix: str) -> list[Layout]:
    return group_layouts(prefix, await list_objects(s3, prefix))


async def index_doc(s3: ObjectStore, lay: Layout) -> dict[str, Any] | None:
    """The layout's index.json, or None if it is missing or not a JSON object."""
    if lay.index is None:
        return None
    try:
        _, data = await s3.get(lay.index.key)
    except store.NotFound:
        return None
    return _parse(data)
