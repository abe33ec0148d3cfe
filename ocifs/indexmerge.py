"""Three-way merge of an OCI ``index.json`` when two writers raced.

oras, skopeo and umoci all read ``index.json``, change it in memory and write it back whole, so
two processes (or two CI runners on two mounts) pushing different tags into one layout lose one
side's tags on any filesystem. ocifs publishes ``index.json`` with a conditional PUT; when it
loses the race it merges instead of overwriting:

    result = theirs - (what ours removed from base) + (what ours added to base)

over the ``manifests`` array, descriptors compared as whole JSON objects. Everything else in
the document is taken from ours. **Rule for a tag moved by both sides**: this writer's
descriptor wins (it is the later publish), the other side's descriptor for that tag is dropped,
and the conflict is reported so the caller can log it.
"""

from __future__ import annotations

import json
from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"


class NotAnIndex(ValueError):
    """One side is not a JSON object with a ``manifests`` list: no merge possible."""


def _parse(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAnIndex(str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
        raise NotAnIndex("not an image index")
    return doc


def _key(desc: Any) -> str:
    return json.dumps(desc, sort_keys=True, separators=(",", ":"))


def _tag(desc: Any) -> str | None:
    if isinstance(desc, dict):
        ann = desc.get("annotations")
        if isinstance(ann, dict) and isinstance(ann.get(REF_NAME), str):
            return ann[REF_NAME]
    return None


def is_index_doc(data: bytes) -> bool:
    """Whether ``data`` is an image index (a JSON object with a ``manifests`` list)."""
    try:
        _parse(data)
    except NotAnIndex:
        return False
    return True


def merge(base: bytes | None, ours: bytes, theirs: bytes | None) -> tuple[bytes, list[str]]:
    """Merge ``ours`` onto ``theirs`` given their common ``base``; return (bytes, conflicts)."""
    ours_doc = _parse(ours)
    assert ours_doc is not None
    theirs_doc = _parse(theirs)
    if theirs_doc is None:
        return ours, []
    try:
        base_doc = _parse(base) or {"manifests": []}
    except NotAnIndex:  # what this writer saw was no index (empty, cut short): no base
        base_doc = {"manifests": []}
    base_keys = {_key(d) for d in base_doc.get("manifests", [])}
    ours_list = ours_doc.get("manifests", [])
    ours_keys = {_key(d) for d in ours_list}
    added = [d for d in ours_list if _key(d) not in base_keys]
    added_keys = {_key(d) for d in added}
    removed = base_keys - ours_keys
    moved_tags = {t for t in (_tag(d) for d in added) if t is not None}

    result: list[Any] = []
    seen: set[str] = set()
    conflicts: list[str] = []
    for d in theirs_doc.get("manifests", []):
        k = _key(d)
        if k in removed or k in seen:
            continue
        t = _tag(d)
        if t is not None and t in moved_tags and k not in added_keys:
            conflicts.append(f"tag {t!r} was moved by both writers; keeping this writer's {_digest(added, t)}, dropping {d.get('digest')}")
            continue
        seen.add(k)
        result.append(d)
    for d in added:
        k = _key(d)
        if k not in seen:
            seen.add(k)
            result.append(d)
    if result == ours_list:
        return ours, conflicts  # nothing of theirs survives: keep the writer's bytes as written
    merged = dict(ours_doc)
    merged["manifests"] = result
    return json.dumps(merged, separators=(",", ":")).encode(), conflicts


def _digest(added: list[Any], tag: str) -> str:
    for d in added:
        if _tag(d) == tag:
            return str(d.get("digest"))
    return "?"
