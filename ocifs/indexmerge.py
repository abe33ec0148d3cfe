"""Three-way merge of an OCI ``index.json`` when writers raced, and the combining of many.

oras, skopeo and umoci all read ``index.json``, change it in memory and write it back whole, so
two processes (or two CI runners on two mounts) pushing different tags into one layout lose one
side's tags on any filesystem. ocifs publishes ``index.json`` with a conditional PUT; when it
loses the race it merges instead of overwriting:

    result = theirs - (what ours removed from base) + (what ours added to base)

over the ``manifests`` array, descriptors compared as whole JSON objects. Everything else in
the document is taken from ours. **Rule for a tag moved by both sides**: this writer's
descriptor wins (it is the later publish), the other side's descriptor for that tag is dropped,
and the conflict is reported so the caller can log it.

:func:`combine` applies many writers' rewrites, in order, onto one current version: what that
sequence of publishes would have left, computed without a round trip per writer (a mount
publishes all its pending closes of one ``index.json`` with one PUT, see :mod:`ocifs.publish`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence, Set
from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"

# A version of index.json as a writer saw it: (ETag, content).
Seen = tuple[str, bytes]


class NotAnIndex(ValueError):
    """One side is not a JSON object with a ``manifests`` list: no merge possible."""


def _parse(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAnIndex(str(exc)) from None
    if not isinstance(doc, dict):
        raise NotAnIndex("not an image index")
    if doc.get("manifests") is None:
        # zot (Go) writes a new repository's index as {"schemaVersion":2,"manifests":null}:
        # no manifests yet, as an absent list is.
        doc["manifests"] = []
    if not isinstance(doc["manifests"], list):
        raise NotAnIndex("not an image index")
    return doc


def _tag(desc: Any) -> str | None:
    if isinstance(desc, dict):
        ann = desc.get("annotations")
        if isinstance(ann, dict) and isinstance(ann.get(REF_NAME), str):
            return ann[REF_NAME]
    return None


# Descriptors are compared as whole JSON objects: by their canonical JSON text.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


class _Index:
    """A parsed index: the document, and its descriptors by canonical JSON text, in order (a
    descriptor listed twice counts once, at its first place). ``keys`` keeps the list as
    written, duplicates included."""

    __slots__ = ("doc", "entries", "keys")

    def __init__(self, doc: dict[str, Any]) -> None:
        manifests = doc["manifests"]
        self.doc = doc
        self.keys = [_CANONICAL.encode(d) for d in manifests]
        self.entries: dict[str, Any] = {}
        for k, d in zip(self.keys, manifests):
            self.entries.setdefault(k, d)

    @classmethod
    def parse(cls, data: bytes) -> _Index:
        doc = _parse(data)
        assert doc is not None
        return cls(doc)


_EMPTY: frozenset[str] = frozenset()


def _apply(entries: dict[str, Any], base: Set[str], ours: _Index) -> list[str]:
    """Apply what ``ours`` changed against ``base`` (canonical descriptors) onto ``entries``
    (theirs, changed in place), by the rule in the module docstring; return the conflicts.
    The work is proportional to the size of ``ours`` (once) plus what it changed, so that
    many rewrites of a big index can be combined at once."""
    added = [(k, d) for k, d in ours.entries.items() if k not in base]
    for k in base - ours.entries.keys():  # removed by ours
        entries.pop(k, None)
    conflicts: list[str] = []
    moved: dict[str, Any] = {}  # tag -> this writer's (first) descriptor for it
    for _, d in added:
        if (t := _tag(d)) is not None:
            moved.setdefault(t, d)
    if moved:
        added_keys = {k for k, _ in added}
        for k, d in list(entries.items()):
            t = _tag(d)
            if t is not None and t in moved and k not in added_keys:
                conflicts.append(f"tag {t!r} was moved by both writers; keeping this writer's {moved[t].get('digest')}, dropping {d.get('digest')}")
                del entries[k]
    for k, d in added:
        entries.setdefault(k, d)
    return conflicts


def _base_keys(data: bytes | None) -> Set[str]:
    """What a writer saw, as a merge base; none, or content that is no index, counts as empty."""
    if data is None:
        return _EMPTY
    try:
        return _Index.parse(data).entries.keys()
    except NotAnIndex:  # what this writer saw was no index (empty, cut short): no base
        return _EMPTY


def _render(doc: dict[str, Any], entries: dict[str, Any]) -> bytes:
    out = dict(doc)
    out["manifests"] = list(entries.values())
    return json.dumps(out, separators=(",", ":")).encode()


def merge(base: bytes | None, ours: bytes, theirs: bytes | None) -> tuple[bytes, list[str]]:
    """Merge ``ours`` onto ``theirs`` given their common ``base``; return (bytes, conflicts)."""
    ours_ix = _Index.parse(ours)
    if theirs is None:
        return ours, []
    entries = _Index.parse(theirs).entries
    conflicts = _apply(entries, _base_keys(base), ours_ix)
    if list(entries) == ours_ix.keys:
        return ours, conflicts  # nothing of theirs survives: keep the writer's bytes as written
    return _render(ours_ix.doc, entries), conflicts


@dataclasses.dataclass
class Combined:
    """What :func:`combine` made of a sequence of rewrites."""

    body: bytes | None  # the index to publish; None when every rewrite was rejected
    rejected: dict[int, str]  # position of a rewrite that cannot be published -> why
    notes: list[str]  # conflicts and replacements, for the log


def combine(current: Seen | None, changes: Sequence[tuple[Seen | None, bytes]]) -> Combined:
    """Apply ``changes`` in order onto ``current`` (None: no object) as successive publishes.

    Each change is (the version its writer saw, or None; what it wrote). A change whose writer
    saw exactly the version it now applies to (same ETag, nothing applied before it) replaces
    it byte for byte, as an uncontended conditional PUT would. Otherwise it is three-way merged
    (:func:`merge`'s rule; later changes win a tag moved by two). A change that is no image
    index is rejected when it would have to be merged: an empty or half-written file (a forked
    child closing an inherited descriptor) never wins over a real index. A current version
    that is no index is replaced by the first change that is one (noted).
    """
    raw: bytes | None = current[1] if current is not None else None  # the content, while it is bytes as stored or written
    etag: str | None = current[0] if current is not None else None  # its ETag, while it is that stored version
    doc: dict[str, Any] | None = None  # once merged: the document (of the last change) ...
    entries: dict[str, Any] | None = None  # ... and its descriptors
    bases: dict[bytes, Set[str]] = {}  # many writers saw the same version: parse it once
    rejected: dict[int, str] = {}
    notes: list[str] = []
    applied = 0
    for i, (seen, ours) in enumerate(changes):
        if (raw is None and entries is None) or (seen is not None and etag is not None and seen[0] == etag):
            raw, etag, doc, entries = ours, None, None, None  # nothing there, or exactly what its writer saw
            applied += 1
            continue
        try:
            ours_ix = _Index.parse(ours)
        except NotAnIndex:
            rejected[i] = "changed meanwhile, and this write is not an image index"
            continue
        if entries is None:
            assert raw is not None
            try:
                entries = _Index.parse(raw).entries
            except NotAnIndex as exc:
                notes.append(f"the current version is not an image index ({exc}); a write replaces it")
                raw, etag, doc, entries = ours, None, None, None
                applied += 1
                continue
        base = _EMPTY if seen is None else bases.get(seen[1])
        if base is None:
            base = bases[seen[1]] = _base_keys(seen[1])  # type: ignore[index]
        notes += _apply(entries, base, ours_ix)
        if list(entries) == ours_ix.keys:
            raw, entries, doc = ours, None, None  # nothing of theirs survives: the writer's bytes as written
        else:
            raw, doc = None, ours_ix.doc
        etag = None
        applied += 1
    if not applied:
        return Combined(None, rejected, notes)
    if raw is not None:
        return Combined(raw, rejected, notes)
    assert doc is not None and entries is not None
    return Combined(_render(doc, entries), rejected, notes)
