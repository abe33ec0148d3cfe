"""OCI image layouts as they lie in a bucket: which exist, what they tag, what is reachable.

Used by ``ocifs ls``, ``ocifs gc`` and ``ocifs fsck``, which work on the bucket directly (no
mount needed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ocifs.layout import blob_digest
from ocifs.store import ObjectInfo

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MAX_MANIFEST = 4 * 1024 * 1024  # manifests bigger than this are not read (registries cap at 4 MiB)
# Names OCI clients use for temporary files in a layout (oras, zot, skopeo, umoci).
LEFTOVER_DIRS = ("ingest/", ".uploads/")
LEFTOVER_PREFIXES = ("oci-put-blob", ".umoci-")


@dataclasses.dataclass
class Layout:
    root: str  # key prefix of the layout, "" or ending in "/"
    index: ObjectInfo | None = None
    oci_layout: ObjectInfo | None = None
    blobs: dict[str, ObjectInfo] = dataclasses.field(default_factory=dict)  # "sha256:<hex>" -> info
    leftovers: list[ObjectInfo] = dataclasses.field(default_factory=list)
    markers: list[ObjectInfo] = dataclasses.field(default_factory=list)  # "dir/" objects

    @property
    def name(self) -> str:
        return self.root.rstrip("/") or "."


def group_layouts(prefix: str, objects: list[ObjectInfo]) -> list[Layout]:
    """Find layouts (directories holding ``index.json`` or ``oci-layout``) among keys."""
    roots: dict[str, Layout] = {}
    for o in objects:
        rel = o.key[len(prefix) :]
        for fname in ("index.json", "oci-layout"):
            if rel == fname or rel.endswith("/" + fname):
                root = rel[: len(rel) - len(fname)]
                lay = roots.setdefault(root, Layout(root))
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
        if d is not None and sub.startswith("blobs/"):
            lay.blobs[f"{d[0]}:{d[1]}"] = o
        elif sub.startswith(LEFTOVER_DIRS) or sub.startswith(LEFTOVER_PREFIXES):
            lay.leftovers.append(o)
    return [roots[r] for r in sorted(roots)]


def tags_of(index_doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(tag, digest) pairs of an index.json."""
    out = []
    for d in index_doc.get("manifests", []) or []:
        ann = d.get("annotations") or {}
        if REF_NAME in ann:
            out.append((ann[REF_NAME], d.get("digest", "")))
    return sorted(out)


def references(doc: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Descriptors a manifest or index points to: (digest, mediaType)."""
    out: list[tuple[str, str | None]] = []

    def add(desc: Any) -> None:
        if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
            out.append((desc["digest"], desc.get("mediaType")))

    for d in doc.get("manifests", []) or []:
        add(d)
    add(doc.get("config"))
    for d in doc.get("layers", []) or []:
        out.append((d["digest"], None)) if isinstance(d, dict) and "digest" in d else None
    for d in doc.get("blobs", []) or []:
        out.append((d["digest"], None)) if isinstance(d, dict) and "digest" in d else None
    subject = doc.get("subject")
    if isinstance(subject, dict) and "digest" in subject:
        out.append((subject["digest"], subject.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"))
    return out


def is_manifest_type(media_type: str | None) -> bool:
    return media_type is None or media_type in MANIFEST_TYPES or media_type.endswith("+json")


Loader = Callable[[ObjectInfo], Awaitable[bytes]]


async def reachable(lay: Layout, index_doc: dict[str, Any], load: Loader) -> tuple[set[str], set[str]]:
    """Digests reachable from index.json (through manifests, indexes, configs, layers,
    subjects) plus referrers of reachable manifests; and referenced digests that are missing."""
    seen: set[str] = set()
    missing: set[str] = set()
    todo: list[tuple[str, str | None]] = [(d["digest"], d.get("mediaType")) for d in index_doc.get("manifests", []) or [] if "digest" in d]
    parsed: dict[str, dict[str, Any] | None] = {}

    async def parse(dig: str) -> dict[str, Any] | None:
        if dig not in parsed:
            info = lay.blobs.get(dig)
            doc = None
            if info is not None and info.size <= MAX_MANIFEST:
                try:
                    doc = json.loads(await load(info))
                    if not isinstance(doc, dict):
                        doc = None
                except ValueError:
                    doc = None
            parsed[dig] = doc
        return parsed[dig]

    async def walk(items: list[tuple[str, str | None]]) -> None:
        while items:
            dig, mt = items.pop()
            if dig in seen:
                continue
            seen.add(dig)
            if dig not in lay.blobs:
                missing.add(dig)
                continue
            if mt is not None and is_manifest_type(mt) and mt in MANIFEST_TYPES:
                doc = await parse(dig)
                if doc is not None:
                    items.extend(references(doc))

    await walk(todo)
    # Referrers: manifests (not necessarily in index.json) whose subject is reachable.
    changed = True
    while changed:
        changed = False
        for dig, info in lay.blobs.items():
            if dig in seen or info.size > 64 * 1024:
                continue
            doc = await parse(dig)
            subject = (doc or {}).get("subject")
            if isinstance(subject, dict) and subject.get("digest") in seen:
                await walk([(dig, doc.get("mediaType") or "application/vnd.oci.image.manifest.v1+json")])  # type: ignore[union-attr]
                changed = True
    return seen, missing
