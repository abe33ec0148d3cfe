"""The filesystem's promises, driven through its FUSE operations without a kernel.

Each test names the promise it checks (README "Consistency", docs/SEMANTICS.md); the ones
marked with an issue item reproduce a defect found in the write paths (data-safety issue,
items 1-8) and fail on the code before the write state machine.
"""

from __future__ import annotations

import errno
import json
import os

import pyfuse3
import pytest
import trio
import trio.testing

from fsrig import Ctx, MiB, Rig, run, run_mounts
from ocifs import store
from ocifs.gcmarks import GcMarks

A, B, Z = 101, 202, 303  # processes


def blob_name(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def body(n: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 13 + seed) % 251 for i in range(251))
    return (pattern * (n // 251 + 1))[:n]


async def fails_with(err: int, aw) -> None:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await aw
    assert exc.value.errno == err, f"errno {exc.value.errno} ({errno.errorcode.get(exc.value.errno)}), wanted {errno.errorcode[err]}"


# --- item 1: another process's close never publishes an unfinished write ----------------------
def test_a_readers_close_does_not_publish_a_writers_unfinished_bytes(tmp_path):
    old = body(3 * MiB, 1)
    new = body(10 * MiB, 2)

    async def go(r: Rig):
        r.s3.seed("f", old)
        fa = await r.open("f", os.O_WRONLY | os.O_TRUNC, pid=A)
        await r.write(fa, new[:MiB], 0)
        # process B: cat f
        assert await r.read_file("f", pid=B) == old  # the committed version, whole
        assert r.obj("f") == old  # B's close published nothing
        for off in range(MiB, len(new), MiB):
            await r.write(fa, new[off : off + MiB], off)
        await r.close(fa)
        assert r.obj("f") == new
        parts = [c.part for c in r.s3.calls if c.op == "UploadPart"]
        assert sorted(parts) == sorted(set(parts)), "the streaming upload restarted"

    run(go, tmp_path)


def test_the_writer_sees_its_own_writes_and_others_see_the_committed_version(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"committed")
        fa = await r.open("f", os.O_RDWR, pid=A)
        await r.write(fa, b"CHANGED", 0)
        assert await r.read(fa) == b"CHANGEDed"
        assert await r.stat_size("f", pid=A) == 9
        assert await r.read_file("f", pid=A) == b"CHANGEDed"  # another descriptor, same process
        assert await r.read_file("f", pid=B) == b"committed"
        await r.close(fa)
        assert await r.read_file("f", pid=B) == b"CHANGEDed"

    run(go, tmp_path)


def test_two_writers_each_publish_a_whole_version_and_the_later_close_wins(tmp_path):
    async def go(r: Rig):
        fa = await r.open("f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, pid=A)
        fb = await r.open("f", os.O_WRONLY | os.O_TRUNC, pid=B)
        await r.write(fa, b"aaaaaaaa", 0)
        await r.write(fb, b"bb", 0)
        await r.close(fb)
        assert r.obj("f") == b"bb"
        await r.close(fa)
        assert r.obj("f") == b"aaaaaaaa"

    run(go, tmp_path)


# --- item 2: zot's O_CREAT + ftruncate(0) + write + close of a new index.json ------------------
def test_new_index_json_written_with_ftruncate_then_write_reads_back(tmp_path):
    doc = json.dumps({"schemaVersion": 2, "manifests": []}).encode()

    async def go(r: Rig):
        await r.mkdir("repo")
        fh = await r.open("repo/index.json", os.O_WRONLY | os.O_CREAT, pid=Z)
        await r.truncate("repo/index.json", 0, pid=Z, fh=fh)
        await r.write(fh, doc, 0)
        await r.close(fh)
        assert r.obj("repo/index.json") == doc
        assert await r.read_file("repo/index.json", pid=B) == doc
        assert await r.read_file("repo/index.json", pid=Z) == doc

    run(go, tmp_path)


def test_plain_file_written_with_ftruncate_then_write_reads_back(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"old content, longer")
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=Z)
        await r.truncate("f", 0, pid=Z, fh=fh)
        await r.write(fh, b"new", 0)
        await r.close(fh)
        assert r.obj("f") == b"new"

    run(go, tmp_path)


# --- item 3: a failed or withdrawn operation never takes effect later -------------------------
def test_a_close_that_failed_is_never_published_by_the_release(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"v1")
        fh = await r.open("f", os.O_WRONLY | os.O_TRUNC, pid=A)
        await r.write(fh, b"v2 that must not appear", 0)
        r.s3.fail("PutObject")
        await fails_with(errno.EIO, r.ops.flush(fh))
        await r.ops.release(fh)
        assert r.obj("f") == b"v1"
        await r.ops.shutdown()  # nor by the unmount
        assert r.obj("f") == b"v1"

    run(go, tmp_path)


def test_writes_after_a_failed_close_on_another_descriptor_are_refused(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, b"x", 0)
        r.s3.fail("PutObject")
        await fails_with(errno.EIO, r.ops.flush(fh))
        await fails_with(errno.EIO, r.ops.write(fh, 1, b"y"))
        await fails_with(errno.EIO, r.ops.flush(fh))  # a second close still reports it
        await r.ops.release(fh)
        assert r.obj("f") is None
        await fails_with(errno.ENOENT, r.lookup("f"))  # never published: it does not exist

    run(go, tmp_path)


def test_a_failed_fsync_publishes_nothing_but_the_close_can_still_publish(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, b"data", 0)
        r.s3.fail("PutObject")
        await fails_with(errno.EIO, r.ops.fsync(fh, False))
        assert r.obj("f") is None
        await r.close(fh)
        assert r.obj("f") == b"data"

    run(go, tmp_path)


def test_a_truncate_by_path_that_failed_leaves_nothing_to_publish_later(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"0123456789")
        r.s3.fail("PutObject")
        await fails_with(errno.EIO, r.truncate("f", 4, pid=A))
        assert r.obj("f") == b"0123456789"
        fh = await r.open("f", os.O_WRONLY, pid=A)  # a later close of that process
        await r.close(fh)
        await r.ops.shutdown()  # or the unmount
        assert r.obj("f") == b"0123456789"

    run(go, tmp_path)


def test_unlink_during_a_publish_in_flight_is_not_undone_by_it(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, b"data", 0)
        r.s3.freeze("PutObject")
        async with trio.open_nursery() as n:
            n.start_soon(r.close, fh)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(r.unlink, "f", B)
            await trio.testing.wait_all_tasks_blocked()
            r.s3.thaw()
        assert r.obj("f") is None  # rm returned 0: the file is gone, and stays gone
        await fails_with(errno.ENOENT, r.lookup("f"))

    run(go, tmp_path)


def test_writes_to_an_unlinked_file_go_nowhere(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, body(12 * MiB), 0)  # streaming parts
        await r.unlink("f", pid=A)
        await r.write(fh, b"more", 12 * MiB)
        await r.close(fh)
        assert r.s3.objects == {} and r.s3.uploads == {}

    run(go, tmp_path)


def test_truncating_a_closed_ingest_file_then_renaming_it_fails_cleanly(tmp_path):
    data = body(7 * MiB, 3)
    hexd = blob_name(data)

    async def go(r: Rig):
        await r.mkdir("lay/ingest")
        await r.mkdir("lay/blobs/sha256")
        await r.write_file(f"lay/ingest/{hexd}_1", data)
        assert r.obj(f"lay/blobs/sha256/{hexd}") == data  # zero-copy: published at close
        await r.truncate(f"lay/ingest/{hexd}_1", 3)
        await fails_with(errno.EBADMSG, r.rename(f"lay/ingest/{hexd}_1", f"lay/blobs/sha256/{hexd}"))
        assert r.obj(f"lay/blobs/sha256/{hexd}") == data  # the blob there is still its digest

    run(go, tmp_path)


def test_a_stop_waits_for_closes_in_flight_to_publish(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, b"closing", 0)
        r.s3.freeze("PutObject")
        async with trio.open_nursery() as n:
            n.start_soon(r.close, fh)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(r.ops.files.drain, 30)  # SIGTERM
            await trio.testing.wait_all_tasks_blocked()
            assert r.ops.files.publishing() == 1
            r.s3.thaw()
        assert r.obj("f") == b"closing"

    run(go, tmp_path)


def test_files_still_open_for_writing_at_unmount_are_not_published(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=A)
        await r.write(fh, body(11 * MiB), 0)
        await r.ops.shutdown()
        assert r.s3.objects == {} and r.s3.uploads == {}

    run(go, tmp_path)


# --- item 4: the index.json merge base belongs to the process, not to an in-memory node -------
def index(*tags: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + blob_name(t.encode()),
                 "size": 1, "annotations": {"org.opencontainers.image.ref.name": t}}
                for t in tags
            ],
        }
    ).encode()


def tags(doc: bytes | None) -> set[str]:
    assert doc is not None
    return {m["annotations"]["org.opencontainers.image.ref.name"] for m in json.loads(doc)["manifests"]}


def test_two_zots_creating_one_repository_at_once_then_tagging_keep_both_tags(tmp_path):
    """zot creates a repository's index.json with open(O_CREAT) + ftruncate(0) + write +
    close, as {"schemaVersion":2,"manifests":null}. Two zots on two mounts do it at once: the
    second close merges (it used to be EIO: null was "not an index"). And when such a create
    does fail, the inode the kernel still holds for the name must not read as an empty file
    (zot then fails with "invalid JSON"): it is ESTALE, and the kernel looks the name up
    again and reads what S3 has."""
    from fsrig import Fields, run_mounts

    null = b'{"schemaVersion":2,"manifests":null}'
    path = "shared/index.json"

    async def zot_write(r: Rig, inode: int, data: bytes, pid: int, fh: int | None = None) -> None:
        if fh is None:
            fh = (await r.ops.open(inode, os.O_WRONLY, Ctx(pid))).fh
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 0
        await r.ops.setattr(inode, attr, Fields(update_size=True), fh, Ctx(pid))
        await r.write(fh, data, 0)
        await r.close(fh)

    async def add_tag(r: Rig, tag: str, pid: int) -> None:
        doc = json.loads(await r.read_file(path, pid))
        doc["manifests"] = (doc["manifests"] or []) + json.loads(index(tag))["manifests"]
        await zot_write(r, await r.lookup(path, pid), json.dumps(doc).encode(), pid)

    async def go(rigs: list[Rig]) -> None:
        a, b = rigs
        await a.mkdir("shared", pid=10)
        await b.mkdir("shared", pid=20)
        parent = await b.lookup("shared", 20)
        fi, entry = await b.ops.create(parent, b"index.json", 0o644, os.O_WRONLY | os.O_CREAT, Ctx(20))
        await a.write_file(path, null, pid=10, flags=os.O_WRONLY | os.O_CREAT)  # zot1 first
        await zot_write(b, entry.st_ino, null, 20, fi.fh)  # zot2's create: merged, not EIO
        await add_tag(a, "r0z1", 10)
        await add_tag(b, "r0z2", 20)
        assert tags(b.obj(path)) == {"r0z1", "r0z2"}

        # A create that does fail (a rewrite that is no index, against another mount's file)
        await a.mkdir("other", pid=10)
        await b.mkdir("other", pid=20)
        fi, entry = await b.ops.create(await b.lookup("other", 20), b"index.json", 0o644, os.O_WRONLY | os.O_CREAT, Ctx(20))
        await a.write_file("other/index.json", index("x"), pid=10)
        await b.write(fi.fh, b"not json", 0)
        await fails_with(errno.EIO, b.close(fi.fh))
        await fails_with(errno.ESTALE, b.ops.open(entry.st_ino, os.O_RDONLY, Ctx(20)))
        await fails_with(errno.ESTALE, b.ops.getattr(entry.st_ino, Ctx(20)))
        await trio.sleep(1.1)  # (the kernel's next lookup comes after the listing's TTL)
        assert tags(await b.read_file("other/index.json", 20)) == {"x"}

    run_mounts(go, tmp_path, 2)


def test_a_process_that_never_read_index_json_only_adds_to_it(tmp_path):
    """Two oras pushes start a new repository on one mount at once: both find no index.json
    and write a fresh one with their own tag. The second never read the first's version, so
    its rewrite has no base: it may add, never remove (it used to take the mount's view as its
    base, and so deleted the first tag)."""

    async def go(r: Rig):
        await r.mkdir("repo", pid=Z)
        await r.write_file("repo/index.json", index("one"), pid=Z)
        await r.write_file("repo/index.json", index("two"), pid=Z + 1)  # it saw no index.json
        assert tags(r.obj("repo/index.json")) == {"one", "two"}

    run(go, tmp_path)


def test_a_tag_deleted_by_renaming_index_json_into_place_stays_deleted(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file("repo/index.json", index("a", "b"))
        assert tags(await r.read_file("repo/index.json", pid=Z)) == {"a", "b"}
        await r.write_file("repo/tmp-1", index("a"))  # zot/umoci: temp file, then rename
        await r.rename("repo/tmp-1", "repo/index.json", pid=Z)
        assert tags(r.obj("repo/index.json")) == {"a"}
        r.ops.forget([(await r.lookup("repo/index.json"), 100)])  # the kernel forgets the node
        # another mount adds a tag meanwhile
        r.s3.seed("repo/index.json", index("a", "c"))
        assert tags(await r.read_file("repo/index.json", pid=Z)) == {"a", "c"}
        await r.write_file("repo/tmp-2", index("c"))  # Z deletes tag a
        await r.rename("repo/tmp-2", "repo/index.json", pid=Z)
        assert tags(r.obj("repo/index.json")) == {"c"}

    run(go, tmp_path, metadata_ttl=0)


def test_a_reused_pid_does_not_inherit_an_old_process_base(tmp_path):
    from ocifs.publish import IndexBases

    bases = IndexBases()
    bases.saw((A, 1000), "k", bases.next_seq(), '"e1"', b"old")
    assert bases.base_for((A, 1000), "k") == ('"e1"', b"old")
    assert bases.base_for((A, 2000), "k") is None  # not A's: the new process read nothing
    bases.saw(None, "k", bases.next_seq(), '"e2"', b"new")
    assert bases.base_for((A, 2000), "k") is None
    assert bases.base_for(None, "k") == ('"e2"', b"new")  # the mount's view
    assert bases.base_for((A, 1000), "k") == ('"e1"', b"old")


def test_concurrent_rewriters_of_index_json_on_one_mount_keep_every_tag(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file("repo/index.json", index("base"))
        pids = list(range(1000, 1020))
        for pid in pids:  # every process reads index.json first, as oras does
            assert tags(await r.read_file("repo/index.json", pid=pid)) == {"base"}
        async with trio.open_nursery() as n:
            for pid in pids:
                n.start_soon(r.write_file, "repo/index.json", index("base", f"t{pid}"), pid)
        assert tags(r.obj("repo/index.json")) == {"base"} | {f"t{pid}" for pid in pids}

    run(go, tmp_path)


# --- item 5: an open reader gets a consistent file, never EIO for a plain replace ------------
def test_a_reader_keeps_reading_a_file_renamed_away(tmp_path):
    data = body(5 * MiB, 4)

    async def go(r: Rig):
        await r.write_file("f", data)
        fh = await r.open("f", pid=B)
        first = await r.read(fh, 0, MiB)
        await trio.testing.wait_all_tasks_blocked()
        r.ops.cache.invalidate_key("f")
        await r.rename("f", "g", pid=A)
        assert first + await r.read(fh, MiB) == data
        await r.close(fh)

    run(go, tmp_path)


def test_a_reader_keeps_reading_a_file_chmodded_by_this_mount(tmp_path):
    data = body(3 * MiB, 5)

    async def go(r: Rig):
        await r.write_file("f", data)
        fh = await r.open("f", pid=B)
        first = await r.read(fh, 0, MiB)
        await trio.testing.wait_all_tasks_blocked()
        r.ops.cache.invalidate_key("f")
        await r.chmod("f", 0o600, pid=A)
        assert first + await r.read(fh, MiB) == data

    run(go, tmp_path)


def test_a_file_replaced_elsewhere_mid_read_is_estale_and_before_any_read_switches(tmp_path):
    old, new = body(3 * MiB, 6), body(4 * MiB, 7)

    async def go(r: Rig):
        await r.write_file("f", old)
        mid = await r.open("f", pid=B)
        fresh = await r.open("f", pid=B)
        await r.read(mid, 0, MiB)
        await trio.testing.wait_all_tasks_blocked()  # read-ahead done: then drop what it got
        r.s3.seed("f", new)  # another mount replaced it
        r.ops.cache.invalidate_key("f")
        await fails_with(errno.ESTALE, r.ops.read(mid, MiB, MiB))
        assert await r.read(fresh) == new

    run(go, tmp_path, metadata_ttl=0)


def test_a_blob_recopied_elsewhere_keeps_reading(tmp_path):
    data = body(3 * MiB, 8)
    hexd = blob_name(data)

    async def go(r: Rig):
        r.s3.seed(f"l/blobs/sha256/{hexd}", data)
        fh = await r.open(f"l/blobs/sha256/{hexd}", pid=B)
        first = await r.read(fh, 0, MiB)
        r.s3.seed(f"l/blobs/sha256/{hexd}", data, {"x": "new etag"})
        r.s3.objects[f"l/blobs/sha256/{hexd}"].etag = '"another"'
        r.ops.cache.invalidate_key(f"l/blobs/sha256/{hexd}")
        assert first + await r.read(fh, MiB) == data

    run(go, tmp_path)


# --- item 6: big files and existing objects need no whole download in one operation -----------
def test_appending_to_an_existing_object_downloads_none_of_it(tmp_path):
    base = body(20 * MiB, 9)

    async def go(r: Rig):
        r.s3.seed("u", base)
        for i in range(3):  # zot's PATCH: open without O_TRUNC, write at EOF, close
            fh = await r.open("u", os.O_WRONLY, pid=Z)
            await r.write(fh, b"chunk%d" % i, len(base) + 6 * i)
            await r.close(fh)
        assert r.obj("u") == base + b"chunk0chunk1chunk2"
        assert [c for c in r.s3.calls if c.op == "GetObject"] == []

    run(go, tmp_path)


def test_truncate_by_path_of_a_big_object_downloads_none_of_it(tmp_path):
    base = body(30 * MiB, 10)

    async def go(r: Rig):
        r.s3.seed("big", base)
        await r.truncate("big", 12 * MiB + 1, pid=A)
        assert r.obj("big") == base[: 12 * MiB + 1]
        assert [c for c in r.s3.calls if c.op == "GetObject"] == []

    run(go, tmp_path)


# --- item 8: a big index.json renamed into place reads back exactly at every offset -----------
def test_big_index_json_renamed_into_place_reads_exactly_at_every_offset(tmp_path):
    doc = index(*[f"tag-{i:06d}" for i in range(12000)])  # > 2 chunks of 1 MiB
    assert len(doc) > 2 * MiB

    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file("repo/tmp", doc, pid=Z)
        await r.rename("repo/tmp", "repo/index.json", pid=Z)
        fh = await r.open("repo/index.json", pid=B)
        for off in list(range(0, len(doc), 333_333)) + [MiB - 5, 2 * MiB - 1]:
            assert await r.ops.read(fh, off, 700_001) == doc[off : off + 700_001], off
        await r.close(fh)

    run(go, tmp_path)


# --- fleet safety: no single operation ends the mount -----------------------------------------
def test_a_read_that_times_out_answers_eio_and_the_mount_lives_on(tmp_path):
    data = body(6 * MiB, 11)

    async def go(r: Rig):
        r.s3.seed("f", data)
        fh = await r.open("f", pid=B)
        await r.read(fh, 0, MiB)  # read-ahead tasks start
        r.s3.freeze("GetObject")
        await fails_with(errno.EIO, r.ops.read(fh, 3 * MiB, MiB))
        r.s3.thaw()
        assert await r.read(fh, 0) == data  # the same handle, the same mount
        await r.close(fh)
        assert await r.read_file("f") == data

    run(go, tmp_path, op_timeout=1)


def test_a_blob_deleted_by_another_host_is_noticed_after_the_metadata_ttl(tmp_path):
    data = b"layer"
    key = f"app/blobs/sha256/{blob_name(data)}"

    async def go(r: Rig):
        r.s3.seed(key, data)
        await r.lookup(key)
        del r.s3.objects[key]  # ocifs gc on another runner
        await trio.sleep(0.06)
        await fails_with(errno.ENOENT, r.lookup(key))

    run(go, tmp_path, metadata_ttl=0.05)


def test_a_store_error_is_an_errno_of_the_operation(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"x")
        r.s3.fail("DeleteObject", store.Denied)
        await fails_with(errno.EACCES, r.unlink("f"))
        r.s3.fail("PutObject", store.NoSuchUpload)
        fh = await r.open("g", os.O_WRONLY | os.O_CREAT)
        await r.write(fh, b"y", 0)
        await fails_with(errno.EIO, r.close(fh))  # a failed publish is EIO, never ENOENT

    run(go, tmp_path)


def test_names_longer_than_255_bytes_are_enametoolong(tmp_path):
    async def go(r: Rig):
        await fails_with(errno.ENAMETOOLONG, r.ops.lookup(pyfuse3.ROOT_INODE, b"n" * 256, Ctx(1)))
        await fails_with(errno.ENAMETOOLONG, r.ops.create(pyfuse3.ROOT_INODE, b"n" * 256, 0o644, os.O_WRONLY, Ctx(1)))
        await fails_with(errno.ENAMETOOLONG, r.ops.mkdir(pyfuse3.ROOT_INODE, b"d" * 300, 0o755, Ctx(1)))

    run(go, tmp_path)


def test_hostile_keys_are_hidden_and_do_not_break_listings(tmp_path):
    async def go(r: Rig):
        for key in ("h/a//b", "h/x/./y", "h/x/../y", "h/" + "n" * 300, "h/ok", "h/both", "h/both/child", ".ocifs/gc/marks/1.json"):
            r.s3.seed(key, b"k")
        root, _ = await r.ops.ns.list_dir(r.ops.ns.get(pyfuse3.ROOT_INODE))
        assert [name for name, _ in root] == ["h"]  # .ocifs is ocifs's own
        entries, _ = await r.ops.ns.list_dir(r.ops.ns.get(await r.lookup("h")))
        names = [name for name, _ in entries]
        assert names == ["a", "both", "ok", "x"]  # a//b: its 'a' directory; 300-byte name hidden
        assert entries[1][1] is None  # both is a directory; the object 'both' is hidden
        assert await r.read_file("h/ok") == b"k"
        assert await r.read_file("h/both/child") == b"k"

    run(go, tmp_path)


def test_a_closed_ingest_file_survives_the_kernel_forgetting_it_until_its_rename(tmp_path):
    data = body(3 * MiB, 12)
    hexd = blob_name(data)

    async def go(r: Rig):
        await r.mkdir("lay/ingest")
        await r.mkdir("lay/blobs/sha256")
        await r.write_file(f"lay/ingest/{hexd}_9", data)
        inode = await r.lookup(f"lay/ingest/{hexd}_9")
        r.ops.forget([(inode, r.ops.ns.get(inode).lookups)])  # the kernel drops its dentry
        await r.rename(f"lay/ingest/{hexd}_9", f"lay/blobs/sha256/{hexd}")
        assert await r.read_file(f"lay/blobs/sha256/{hexd}") == data

    run(go, tmp_path)


def test_a_tag_deleted_after_the_kernel_forgot_index_json_stays_deleted(tmp_path):
    """The base of a rewrite is what that process last read, even when the in-memory node was
    recreated in between (the old per-node version counter restarted and ignored the read)."""

    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file("repo/index.json", index("b"))
        assert tags(await r.read_file("repo/index.json", pid=Z)) == {"b"}
        await r.write_file("repo/index.json", index("b", "x"), pid=Z)
        await r.write_file("repo/index.json", index("b"), pid=Z)  # Z's base: {b}
        inode = await r.lookup("repo/index.json")
        r.ops.forget([(inode, r.ops.ns.get(inode).lookups)])  # the kernel drops the node
        r.s3.seed("repo/index.json", index("a", "b"))  # another mount adds tag a
        assert tags(await r.read_file("repo/index.json", pid=Z)) == {"a", "b"}
        await r.write_file("repo/index.json", index("b"), pid=Z)  # Z deletes tag a
        assert tags(r.obj("repo/index.json")) == {"b"}

    run(go, tmp_path, metadata_ttl=0)


def test_a_write_that_must_wait_answers_eio_at_the_deadline_and_the_mount_lives_on(tmp_path):
    """Most writes stage without awaiting and run outside any deadline scope (fs.write); the
    two that wait, for a base chunk to copy-on-write and for a part slot while S3 hangs, still
    end at op_timeout with EIO, and the next file writes and publishes."""
    base = body(3 * MiB, 17)

    async def go(r: Rig):
        r.s3.seed("old", base)
        fh = await r.open("old", os.O_WRONLY, pid=A)
        r.s3.freeze("GetObject")
        await fails_with(errno.EIO, r.ops.write(fh, MiB + 5, b"patch"))  # needs chunk 1 of the base
        r.s3.thaw()
        await r.ops.release(fh)

        r.s3.freeze("UploadPart")
        fh = await r.open("big", os.O_WRONLY | os.O_CREAT, pid=B)
        with pytest.raises(pyfuse3.FUSEError) as caught:
            for off in range(0, 64 * MiB, MiB):  # parts pile up until the writer must wait
                await r.ops.write(fh, off, body(MiB, off))
        assert caught.value.errno == errno.EIO
        r.s3.thaw()
        await r.ops.release(fh)

        await r.write_file("after", b"still here")
        assert r.obj("after") == b"still here"

    run(go, tmp_path, op_timeout=1)


def test_a_read_waiting_on_a_read_ahead_that_timed_out_answers_eio_and_the_mount_lives_on(tmp_path):
    """The read-ahead GET times out first; the read that waited for it must get its own answer
    (the old cache re-raised the read-ahead's Cancelled in the reader: the FUSE loop ended)."""
    data = body(6 * MiB, 13)

    async def go(r: Rig):
        r.s3.seed("f", data)
        warm = await r.open("f", pid=A)
        assert await r.read(warm, 0, MiB) == data[:MiB]  # chunk 0 cached
        await trio.testing.wait_all_tasks_blocked()
        r.ops.cache.invalidate_key("x")  # (nothing else cached matters)
        for ck in [k for k in list(r.ops.cache._lru.keys()) if k[2] != 0]:
            r.ops.cache._lru.pop(ck)
        r.s3.freeze("GetObject")
        fh = await r.open("f", pid=B)
        assert await r.ops.read(fh, 0, MiB) == data[:MiB]  # from memory; read-ahead of chunk 1 hangs
        await trio.sleep(0.5)
        await fails_with(errno.EIO, r.ops.read(fh, MiB, MiB))  # waits on that read-ahead
        r.s3.thaw()
        assert await r.read(fh, 0) == data
        await r.close(fh)
        await r.close(warm)

    run(go, tmp_path, op_timeout=1)


# --- lookups: what they cost and what they may not forget ---------------------------------------
def seed_layout(s3, layer: bytes, index_doc: bytes = b'{"schemaVersion":2,"manifests":[]}') -> None:
    s3.seed("app/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    s3.seed("app/index.json", index_doc)
    s3.seed(f"app/blobs/sha256/{blob_name(layer)}", layer)


def test_a_layout_found_by_its_first_lookup_answers_its_files_and_blobs_without_a_request(tmp_path):
    """The LIST that finds a directory lists every key below it: a cold `oras pull` makes one
    HEAD and one LIST for all its lookups (the layout, its files, blobs/sha256, each blob)."""
    layer = body(MiB)

    async def go(r: Rig):
        seed_layout(r.s3, layer)
        for path in ["app/oci-layout", "app/index.json", f"app/blobs/sha256/{blob_name(layer)}"]:
            await r.lookup(path)
        with pytest.raises(pyfuse3.FUSEError):
            await r.lookup(f"app/blobs/sha256/{blob_name(b'other')}")  # absent: the listing says so
        assert [c.key for c in r.s3.calls if c.op == "HeadObject"] == ["app"]
        assert len([c for c in r.s3.calls if c.op == "ListObjectsV2"]) == 1
        assert await r.read_file(f"app/blobs/sha256/{blob_name(layer)}") == layer

    run(go, tmp_path)


def test_a_tree_listed_by_a_probe_shows_what_each_directory_listing_would(tmp_path):
    """Hidden names, markers, and a name that is both a file and a directory come out of the
    one LIST without delimiter as they do from each directory's own delimited LIST."""

    async def go(r: Rig):
        for key in ["d/a.txt", "d/sub/b.txt", "d/sub/deeper/c.txt", "d/empty/", "d/both", "d/both/x",
                    "d/sub/./hidden", "d/sub//hidden2"]:
            r.s3.seed(key, b"x")
        await r.lookup("d")
        ns = r.ops.ns
        r.s3.calls.clear()
        shown = {}
        for p in ["d", "d/sub", "d/sub/deeper", "d/empty", "d/both"]:
            entries, _ = await ns.list_dir(ns.paths.get(p) or ns.node_for(p, None))
            shown[p] = {name: ("dir" if e is None or getattr(e, "is_dir", False) else "file") for name, e in entries}
        assert r.s3.calls == []
        assert shown == {
            "d": {"a.txt": "file", "sub": "dir", "empty": "dir", "both": "dir"},
            "d/sub": {"b.txt": "file", "deeper": "dir"},
            "d/sub/deeper": {"c.txt": "file"},
            "d/empty": {},
            "d/both": {"x": "file"},
        }
        assert "d/empty" in ns.markers

    run(go, tmp_path)


def test_a_directory_whose_tree_is_bigger_than_a_page_is_not_listed_by_its_probe(tmp_path):
    async def go(r: Rig):
        for i in range(1001):
            r.s3.seed(f"big/blobs/sha256/{i:064x}", b"x")
        await r.lookup(f"big/blobs/sha256/{5:064x}")
        assert r.ops.ns._listing("big") is None
        heads = [c.key for c in r.s3.calls if c.op == "HeadObject"]
        assert heads[-1] == f"big/blobs/sha256/{5:064x}"  # asked, not taken from a partial list

    run(go, tmp_path)


def test_a_cold_pull_waits_one_round_trip_for_its_lookups_and_layout_files(tmp_path):
    """The probe that finds a layout starts the GETs of oci-layout and index.json and the gc
    marks views its blob lookups need, together: stat the layout, read both files, look a
    blob up, in two round trips (a probe and one batch), not five in a row."""
    layer = body(100_000)  # bigger than a small blob: not fetched ahead

    async def go(rigs: list[Rig]):
        r = rigs[0]
        r.ops.ns.gc_marks = GcMarks(r.s3, 1.0)
        seed_layout(r.s3, layer)
        for op in ("HeadObject", "ListObjectsV2", "GetObject"):
            r.s3.delay(op, 1.0)
        t0 = trio.current_time()
        await r.lookup("app")
        assert await r.read_file("app/oci-layout") == b'{"imageLayoutVersion":"1.0.0"}'
        assert await r.read_file("app/index.json") == b'{"schemaVersion":2,"manifests":[]}'
        await r.lookup(f"app/blobs/sha256/{blob_name(layer)}")
        assert trio.current_time() - t0 == pytest.approx(2.0)
        assert len([c for c in r.s3.calls if c.op == "GetObject"]) == 2  # each file once

    run_mounts(go, tmp_path, 1, clock=trio.testing.MockClock(autojump_threshold=0))


def image(layer: bytes) -> tuple[bytes, bytes]:
    """A manifest of one layer, and an index.json that tags it."""
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "layers": [{"mediaType": "application/octet-stream", "digest": "sha256:" + blob_name(layer),
                                       "size": len(layer)}]}).encode()
    doc = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + blob_name(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}).encode()
    return manifest, doc


def test_a_layout_found_by_a_lookup_brings_its_manifest_along(tmp_path):
    """`oras pull` reads the manifest one round trip after index.json: the probe that finds
    the layout fetches its few small blobs (manifest, config) with index.json, so reading the
    manifest asks S3 nothing; a layer (bigger) is not fetched before it is read."""
    layer = body(100_000)
    manifest, doc = image(layer)
    manifest_key = f"app/blobs/sha256/{blob_name(manifest)}"

    async def go(r: Rig):
        seed_layout(r.s3, layer, doc)
        r.s3.seed(manifest_key, manifest)
        await r.lookup("app")
        await trio.testing.wait_all_tasks_blocked()
        gets = [c.key for c in r.s3.calls if c.op == "GetObject"]
        assert sorted(gets) == ["app/blobs/sha256/" + blob_name(manifest), "app/index.json", "app/oci-layout"], gets
        assert await r.read_file(manifest_key) == manifest
        assert len([c for c in r.s3.calls if c.op == "GetObject"]) == len(gets)

    run(go, tmp_path)


def test_a_layout_with_many_small_blobs_has_none_fetched_ahead(tmp_path):
    """A registry's many-tag repository (zot walks every one at startup): which manifest a
    client wants is a guess, so none is fetched before it is read."""
    manifests = [json.dumps({"schemaVersion": 2, "n": i}).encode() for i in range(9)]

    async def go(r: Rig):
        seed_layout(r.s3, body(100_000))
        for m in manifests:
            r.s3.seed(f"app/blobs/sha256/{blob_name(m)}", m)
        await r.lookup("app")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(c.key for c in r.s3.calls if c.op == "GetObject") == ["app/index.json", "app/oci-layout"]

    run(go, tmp_path)


def test_with_a_disk_cache_no_small_blob_is_fetched_ahead(tmp_path):
    """--disk-cache serves blobs from disk: a GET ahead of the read would mostly be wasted
    (oras's empty config, which it never reads, would be fetched on every remount)."""
    layer = body(100_000)
    manifest, doc = image(layer)

    async def go(r: Rig):
        seed_layout(r.s3, layer, doc)
        r.s3.seed(f"app/blobs/sha256/{blob_name(manifest)}", manifest)
        await r.lookup("app")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(c.key for c in r.s3.calls if c.op == "GetObject") == ["app/index.json", "app/oci-layout"]

    run(go, tmp_path, disk_cache=tmp_path / "disk")


def test_a_file_this_mount_published_while_a_listing_was_in_flight_is_not_forgotten(tmp_path):
    """A LIST that began before this mount's publish does not show the file; once the file's
    own attributes age past the TTL, that listing must not answer ENOENT for it."""

    async def go(r: Rig):
        r.s3.seed("d/x", b"x")
        await r.lookup("d")
        await trio.sleep(1.1)  # d's listing is stale: the next readdir lists again
        real, gate, listed = r.s3.list_page, trio.Event(), trio.Event()

        async def slow_list(prefix, *args, **kw):
            page = await real(prefix, *args, **kw)
            if prefix == "d/":  # the answer left S3 before the publish below, and arrives after
                listed.set()
                await gate.wait()
            return page

        r.s3.list_page = slow_list
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.ops.ns.list_dir, r.ops.ns.paths["d"])
            await listed.wait()
            await r.write_file("d/new", b"new")
            await trio.sleep(0.5)
            gate.set()
        await trio.sleep(0.6)  # d/new's attributes are now older than the TTL; the listing is not
        assert await r.read_file("d/new") == b"new"

    run(go, tmp_path, metadata_ttl=1.0)


def test_a_blob_pushed_through_an_ingest_file_reads_back_without_a_get(tmp_path):
    """oras reads each manifest it pushed (to index it): the bytes this mount just published
    are in the cache, whichever way they were published (zero-copy ingest or plain)."""
    manifest = b'{"schemaVersion":2,"layers":[]}'
    plain = b'{"schemaVersion":2,"config":{}}'

    async def go(r: Rig):
        await r.mkdir("lay/ingest")
        await r.mkdir("lay/blobs/sha256")
        await r.write_file(f"lay/ingest/{blob_name(manifest)}_1", manifest)
        await r.rename(f"lay/ingest/{blob_name(manifest)}_1", f"lay/blobs/sha256/{blob_name(manifest)}")
        await r.write_file(f"lay/blobs/sha256/{blob_name(plain)}", plain)
        assert await r.read_file(f"lay/blobs/sha256/{blob_name(manifest)}", pid=B) == manifest
        assert await r.read_file(f"lay/blobs/sha256/{blob_name(plain)}", pid=B) == plain
        assert [c for c in r.s3.calls if c.op == "GetObject"] == []

    run(go, tmp_path)


# --- reads: the first chunk of a cold file --------------------------------------------------------
def test_a_cold_read_fetches_its_chunk_in_four_ranged_gets_at_once(tmp_path):
    """S3 serves each connection at a bounded rate: the chunk a read waits on comes in four
    pieces fetched together (one round trip, a quarter of the bytes each)."""
    data = body(8 * MiB, 5)

    async def go(rigs: list[Rig]):
        r = rigs[0]
        r.s3.seed(f"lay/blobs/sha256/{blob_name(data)}", data)
        fh = await r.open(f"lay/blobs/sha256/{blob_name(data)}")
        r.s3.delay("GetObject", 1.0)
        t0 = trio.current_time()
        assert await r.read(fh, 0, 128 * 1024) == data[: 128 * 1024]
        assert trio.current_time() - t0 == pytest.approx(1.0)
        assert len([c for c in r.s3.calls if c.op == "GetObject"]) == 4
        assert await r.read(fh, 0, 8 * MiB) == data  # the whole chunk, from the cache
        assert len([c for c in r.s3.calls if c.op == "GetObject"]) == 4
        await r.close(fh)

    run_mounts(go, tmp_path, 1, clock=trio.testing.MockClock(autojump_threshold=0), chunk_size=8 * MiB)


def test_a_piece_that_finds_the_object_changed_is_an_answer_not_a_failure(tmp_path):
    """One of the pieces meets If-Match failing: the read switches versions as it does for a
    whole-chunk GET (nothing was returned yet), instead of failing with EIO."""
    data = body(8 * MiB, 6)

    async def go(r: Rig):
        r.s3.seed("f", data)
        fh = await r.open("f")
        r.s3.fail("GetObject", store.PreconditionFailed)
        assert await r.read(fh, 0, 8 * MiB) == data
        await r.close(fh)

    run(go, tmp_path, chunk_size=8 * MiB)


def test_a_name_just_found_missing_is_not_asked_for_again_at_once(tmp_path):
    """stat then mkdir (os.MkdirAll, oras's first step into a new repository): the kernel
    looks the name up again for the mkdir; S3 answered "missing" a moment ago, so it is not
    asked again. Creating the name ends that at once; after NEGATIVE_REUSE S3 is asked again."""

    async def go(r: Rig):
        def requests() -> int:
            return len([c for c in r.s3.calls if c.op in ("HeadObject", "ListObjectsV2")])

        for name in ("app", "other"):
            with pytest.raises(pyfuse3.FUSEError):
                await r.lookup(name)
        asked = requests()
        with pytest.raises(pyfuse3.FUSEError):
            await r.lookup("app")
        assert requests() == asked
        await r.mkdir("app")
        await r.lookup("app")
        await trio.sleep(0.15)
        r.s3.seed("other/x", b"x")  # made by another mount meanwhile
        await r.lookup("other")
        assert requests() > asked

    run(go, tmp_path)


def test_a_new_layout_fetches_the_gc_views_of_its_blobs_while_it_is_being_made(tmp_path):
    """oras into a new repository: mkdir, write oci-layout, write index.json, then push each
    blob, and each blob publish first checks the gc marks views. Those are fetched from the
    oci-layout create on, so the first blob's publish waits on no LIST."""

    async def go(rigs: list[Rig]):
        r = rigs[0]
        marks = GcMarks(r.s3, 10.0)
        r.ops.ns.gc_marks = marks
        await r.mkdir("app")
        r.s3.delay("ListObjectsV2", 1.0)
        await r.write_file("app/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        await trio.sleep(1.5)  # the client writes index.json meanwhile
        t0 = trio.current_time()
        await marks.keep_if_condemned(f"app/blobs/sha256/{blob_name(b'layer')}", t0)
        assert trio.current_time() - t0 == 0

    run_mounts(go, tmp_path, 1, clock=trio.testing.MockClock(autojump_threshold=0))
