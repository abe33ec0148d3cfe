"""Everything a mount keeps in memory has a bound (fleet-safety issue, item 8)."""

from __future__ import annotations

import os

import pyfuse3

from fsrig import MiB, Rig, run
from ocifs import namespace
from ocifs.publish import IndexBases


def test_index_json_bases_are_bounded_in_bytes():
    bases = IndexBases(max_bytes=10 * MiB)
    big = b"x" * MiB
    for pid in range(100):  # 100 processes each remembering a 1 MiB index.json
        bases.saw((pid, 1), f"repo{pid % 7}/index.json", bases.next_seq(), '"e"', big)
    held = sum(len(rec[2]) for rec in bases._by_owner.values()) + sum(len(rec[2]) for rec in bases._by_key.values())
    assert held <= 10 * MiB + 10 * MiB // 4


def test_directory_listings_are_bounded_by_their_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(namespace, "MAX_LISTED_ENTRIES", 500)

    async def go(r: Rig):
        for d in range(50):
            for f in range(30):
                r.s3.seed(f"d{d}/f{f}", b"x")
        for d in range(50):
            await r.ops.ns.list_dir(r.ops.ns.get(await r.lookup(f"d{d}")))
        held = sum(len(listing.entries) + 1 for listing in r.ops.ns._listings.values())
        assert held <= 500

    run(go, tmp_path, metadata_ttl=3600)


def test_a_listing_makes_no_nodes_for_entries_the_kernel_never_took(tmp_path):
    async def go(r: Rig):
        for f in range(2000):
            r.s3.seed(f"d/f{f:05d}", b"x")
        d = r.ops.ns.get(await r.lookup("d"))
        before = len(r.ops.ns.nodes)
        entries, _ = await r.ops.ns.list_dir(d)
        assert len(entries) == 2000
        assert len(r.ops.ns.nodes) == before  # nodes are made as readdir hands entries over

    run(go, tmp_path)


def test_an_ingest_file_closed_and_never_renamed_holds_no_upload_and_no_staging(tmp_path):
    import hashlib

    data = os.urandom(7 * MiB)
    name = f"l/ingest/{hashlib.sha256(data).hexdigest()}_1"

    async def go(r: Rig):
        await r.mkdir("l/ingest")
        await r.write_file(name, data)
        assert r.s3.uploads == {}
        assert list((tmp_path / "cache" / "staging").iterdir()) == []
        assert len(r.ops.files.handles) == 0

    run(go, tmp_path)


def test_forgotten_nodes_are_dropped(tmp_path):
    async def go(r: Rig):
        for f in range(100):
            r.s3.seed(f"f{f}", b"x")
        inodes = [await r.lookup(f"f{f}") for f in range(100)]
        grown = len(r.ops.ns.nodes)
        r.ops.forget([(i, 1) for i in inodes])
        assert len(r.ops.ns.nodes) == grown - 100
        assert pyfuse3.ROOT_INODE in r.ops.ns.nodes

    run(go, tmp_path)
