"""What ``ocifs gc`` and ``fsck`` count as reachable: the walk of ocifs.oci over a dict of blobs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import trio

from ocifs.oci import MAX_MANIFEST, MissingBlob, looks_like_json_object, reachable

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def dig(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DictBlobs:
    """A layout's blobs in a dict: digest -> bytes. Counts what the walk reads."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.whole_reads: list[str] = []
        self.sniffs: list[str] = []

    def add(self, data: bytes) -> str:
        d = dig(data)
        self.data[d] = data
        return d

    def add_json(self, doc: dict[str, Any]) -> str:
        return self.add(json.dumps(doc).encode())

    async def manifest(self, digest: str, sniff: bool) -> dict[str, Any] | None:
        if digest not in self.data:
            raise MissingBlob(digest)
        data = self.data[digest]
        if len(data) > MAX_MANIFEST:
            return None
        if sniff:
            self.sniffs.append(digest)
            if not looks_like_json_object(data[:512]):
                return None
        self.whole_reads.append(digest)
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def exists(self, digest: str) -> bool:
        return digest in self.data

    def listed(self, *hide: str) -> dict[str, int]:
        """digest -> size, as a LIST shows them (minus ``hide``: written after the LIST)."""
        return {d: len(b) for d, b in self.data.items() if d not in hide}


def desc(d: str, size: int = 1, media_type: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": d, "size": size, **extra}
    if media_type:
        out["mediaType"] = media_type
    return out


def image(b: DictBlobs, layer_bytes: bytes, subject: str | None = None, pad: int = 0) -> tuple[str, str, str]:
    """(manifest, config, layer) digests of a small image; ``pad`` bytes of annotation."""
    layer = b.add(layer_bytes)
    config = b.add_json({"architecture": "amd64", "tag": layer_bytes.decode(errors="replace")})
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc(config, media_type="application/vnd.oci.image.config.v1+json"),
        "layers": [desc(layer, media_type="application/vnd.oci.image.layer.v1.tar+gzip")],
    }
    if subject:
        doc["subject"] = desc(subject, media_type=MANIFEST)
    if pad:
        doc["annotations"] = {"pad": "x" * pad}
    return b.add_json(doc), config, layer


def index_of(*digests: str, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    ms = []
    for i, d in enumerate(digests):
        ann = {"org.opencontainers.image.ref.name": tags[i]} if i < len(tags) else None
        ms.append(desc(d, media_type=MANIFEST, **({"annotations": ann} if ann else {})))
    return {"schemaVersion": 2, "manifests": ms}


def walk(index: dict[str, Any], b: DictBlobs, listed: dict[str, int] | None = None, roots: tuple[str, ...] = ()):
    async def go():
        return await reachable(index, b, b.listed() if listed is None else listed, roots)

    return trio.run(go)


def test_manifest_config_and_layers_are_reachable_and_nothing_else():
    b = DictBlobs()
    m, c, lay = image(b, b"layer one")
    other = image(b, b"untagged")
    r = walk(index_of(m, tags=("v1",)), b)
    assert r.reached == {m, c, lay}
    assert not set(other) & r.reached
    assert r.missing == set()


def test_an_index_reaches_its_manifests_and_their_blobs():
    b = DictBlobs()
    amd = image(b, b"amd64 layer")
    arm = image(b, b"arm64 layer")
    idx = b.add_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [desc(amd[0], media_type=MANIFEST), desc(arm[0])]})
    r = walk(index_of(idx), b)
    assert r.reached == {idx, *amd, *arm}  # arm's descriptor has no mediaType: still a manifest


def test_a_subject_is_reachable_from_its_referrer():
    b = DictBlobs()
    base = image(b, b"base")
    sig = image(b, b"signature", subject=base[0])
    r = walk(index_of(sig[0]), b)
    assert set(base) <= r.reached


def test_referrers_of_a_reachable_manifest_are_reachable_even_above_64_kib():
    b = DictBlobs()
    base = image(b, b"base")
    small = image(b, b"small sig", subject=base[0])
    big = image(b, b"big sbom", subject=base[0], pad=200 * 1024)
    assert len(b.data[big[0]]) > 64 * 1024
    # A referrer of a referrer (a signature of the SBOM) counts too.
    sig_of_big = image(b, b"sig of sbom", subject=big[0])
    unrelated = image(b, b"unrelated", subject=dig(b"no such manifest"))
    r = walk(index_of(base[0]), b)
    assert set(small) | set(big) | set(sig_of_big) <= r.reached
    assert not set(unrelated) & r.reached


def test_referrer_search_reads_only_blobs_that_start_like_json():
    b = DictBlobs()
    base = image(b, b"base")
    gzip_layer = b.add(b"\x1f\x8b" + b"\0" * 4096)  # unreachable and not JSON: sniffed only
    r = walk(index_of(base[0]), b)
    assert gzip_layer not in r.reached
    assert gzip_layer in b.sniffs and gzip_layer not in b.whole_reads


def test_blobs_over_the_manifest_cap_are_never_read_as_referrers():
    b = DictBlobs()
    base = image(b, b"base")
    huge = b.add(b"{" + b" " * MAX_MANIFEST)
    walk(index_of(base[0]), b)
    assert huge not in b.sniffs and huge not in b.whole_reads


def test_a_manifest_missing_from_the_listing_is_read_by_digest():
    # Pushed after gc's LIST, tagged before its index.json read: its layers must count.
    b = DictBlobs()
    m, c, lay = image(b, b"late push")
    r = walk(index_of(m), b, listed=b.listed(m))
    assert {c, lay} <= r.reached
    assert r.missing == set()


def test_missing_manifests_and_layers_are_dangling():
    b = DictBlobs()
    m, c, lay = image(b, b"layer")
    del b.data[lay]
    gone = dig(b"never pushed")
    r = walk(index_of(m, gone), b)
    assert r.missing == {lay, gone}


def test_a_malformed_digest_is_dangling_not_a_crash():
    b = DictBlobs()
    r = walk({"manifests": [{"digest": "sha256:nothex"}, {"nodigest": 1}, "junk"]}, b)
    assert r.missing == {"sha256:nothex"}


def test_kept_blobs_are_roots_and_a_kept_manifest_keeps_its_layers():
    b = DictBlobs()
    tagged = image(b, b"tagged")
    kept_manifest = image(b, b"untagged, being tagged by oras tag")
    kept_layer = b.add(b"\x1f\x8b reused layer")
    r = walk(index_of(tagged[0]), b, roots=(kept_manifest[0], kept_layer))
    assert set(kept_manifest) | {kept_layer} <= r.reached


def test_a_kept_layer_is_sniffed_not_downloaded():
    b = DictBlobs()
    big_layer = b.add(b"\x1f\x8b" + b"\0" * 100_000)
    walk(index_of(), b, roots=(big_layer,))
    assert big_layer in b.sniffs and big_layer not in b.whole_reads


def test_a_cycle_through_subjects_terminates():
    b = DictBlobs()
    a_doc = {"schemaVersion": 2, "mediaType": MANIFEST, "layers": [], "subject": desc("sha256:" + "0" * 64)}
    a = b.add_json(a_doc)
    c = b.add_json({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [], "subject": desc(a)})
    r = walk(index_of(c), b)
    assert {a, c} <= r.reached
