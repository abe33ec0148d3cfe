"""index.json under a storm of concurrent rewrites: group commit, kernel-free.

Many processes on one mount, and many mounts of one bucket, rewrite one ``index.json`` at
once (CI runners pushing different tags of one repo). What must hold (README, "What ocifs
guarantees", item 3; ocifs/publish.py, "Group commit"):

* every tag of every close that returned 0 is in S3's ``index.json``;
* a close that failed published nothing of its own, now or later;
* the closes of one mount that wait together are published with one PUT, so the PUT count
  grows with the rounds of contention, not with the writers.

S3 latency is injected in FakeS3 and runs on trio's MockClock (virtual time: 25 ms per request,
no real waiting).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pyfuse3
import pytest
import trio
import trio.testing

from fakes3 import FakeS3
from fsrig import Rig, run, run_mounts
from ocifs import store

IDX = "repo/index.json"
REF = "org.opencontainers.image.ref.name"
LATENCY = 0.025  # seconds per S3 request, about what S3 answers in-region


def desc(name: str, tag: str | None = None) -> dict:
    d = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(), "size": 7}
    if tag is not None:
        d["annotations"] = {REF: tag}
    return d


def index(*descs: dict) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": list(descs)}).encode()


def tags(data: bytes | None) -> list[str]:
    """Every tag in ``data``, repeated as often as it is listed."""
    assert data is not None
    return sorted(d["annotations"][REF] for d in json.loads(data)["manifests"] if REF in d.get("annotations", {}))


def untagged(data: bytes | None) -> int:
    assert data is not None
    return sum(1 for d in json.loads(data)["manifests"] if REF not in d.get("annotations", {}))


def index_puts(s3: FakeS3) -> int:
    return sum(1 for c in s3.calls if c.op == "PutObject" and c.key == IDX)


def slow(s3: FakeS3) -> FakeS3:
    for op in ("PutObject", "GetObject", "HeadObject", "ListObjectsV2"):
        s3.delay(op, LATENCY)
    return s3


def virtual() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def push(r: Rig, pid: int, tag: str) -> None:
    """What ``oras push --oci-layout`` does to index.json: read it once, then rewrite it from
    memory twice (the manifest untagged, then tagged: oras-go's Push and Tag)."""
    seen = json.loads(await r.read_file(IDX, pid=pid))["manifests"]
    await r.write_file(IDX, index(*seen, desc(tag)), pid=pid)
    await r.write_file(IDX, index(*seen, desc(tag, tag)), pid=pid)


async def failing_errno(aw) -> int | None:
    """Await ``aw``; the errno it failed with, or None if it succeeded."""
    try:
        await aw
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return None


async def rewrite_open(r: Rig, pid: int, data: bytes) -> int:
    """A process that rewrote index.json and has not closed it yet."""
    fh = await r.open(IDX, os.O_WRONLY | os.O_TRUNC, pid=pid)
    await r.write(fh, data, 0)
    return fh


# --- one mount -------------------------------------------------------------------------------
def test_a_hundred_concurrent_closes_on_one_mount_keep_every_tag_with_a_few_puts(tmp_path):
    writers = range(1000, 1100)

    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        for pid in writers:  # each reads first, as oras does
            await r.read_file(IDX, pid=pid)
        puts_before = index_puts(r.s3)
        failed: dict[int, int | None] = {}

        async def one(pid: int) -> None:
            failed[pid] = await failing_errno(r.write_file(IDX, index(desc("base", "base"), desc(f"m{pid}", f"t{pid}")), pid=pid))

        async with trio.open_nursery() as n:
            for pid in writers:
                n.start_soon(one, pid)
        assert {pid: e for pid, e in failed.items() if e is not None} == {}
        assert tags(r.obj(IDX)) == sorted(["base"] + [f"t{pid}" for pid in writers])
        puts = index_puts(r.s3) - puts_before
        assert puts <= 5, f"{puts} PUTs for 100 closes: they were not combined"
        assert r.ops.publisher.stats["index.merges"] == 0  # closes of one mount never race each other

    run_mounts(lambda rigs: go(rigs[0]), tmp_path, 1, slow(FakeS3()), clock=virtual())


def test_a_hundred_oras_pushes_over_eight_mounts_succeed_promptly_share_puts_and_keep_every_tag_in_a_valid_index(tmp_path):
    mounts, per_mount = 8, 13
    s3 = slow(FakeS3())

    async def go(rigs: list[Rig]):
        await rigs[0].mkdir("repo")
        await rigs[0].write_file(IDX, index(desc("v0", "v0")))
        failed: dict[str, int | None] = {}
        took: list[float] = []

        async def one(r: Rig, pid: int, tag: str) -> None:
            t0 = trio.current_time()
            failed[tag] = await failing_errno(push(r, pid, tag))
            took.append(trio.current_time() - t0)

        async with trio.open_nursery() as n:
            for m, r in enumerate(rigs):
                for w in range(per_mount):
                    n.start_soon(one, r, 1000 + w, f"m{m}w{w}")
        assert {t: e for t, e in failed.items() if e is not None} == {}
        final = r.obj(IDX)
        assert tags(final) == sorted(["v0"] + list(failed))  # all of them, each once
        assert untagged(final) == 0  # every push's untagged manifest was replaced by its tag
        rewrites = 2 * mounts * per_mount
        assert index_puts(s3) < rewrites / 2, "closes waiting together on one mount were not combined"
        # no mount starves: ~0.7 s here; before group commit, seconds, and failed pushes
        assert max(took) < 5, f"a push waited {max(took):.1f} s (virtual) for its index.json"

    run_mounts(go, tmp_path, mounts, s3, clock=virtual())


def test_opening_index_json_to_read_it_succeeds_while_other_hosts_replace_it_faster_than_a_round_trip(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        stop = trio.Event()
        versions: list[bytes] = []

        async def other_hosts() -> None:
            while not stop.is_set():
                versions.append(index(desc("base", "base"), desc(f"o{len(versions)}", "other")))
                r.s3.seed(IDX, versions[-1])
                await trio.sleep(LATENCY / 5)

        async with trio.open_nursery() as n:
            n.start_soon(other_hosts)
            await trio.sleep(1)  # the mount's view is stale by now
            for pid in range(100, 110):
                got = await r.read_file(IDX, pid=pid)  # oras's first step: never ESTALE
                assert got in versions
                await trio.sleep(0.5)
            stop.set()

    run_mounts(lambda rigs: go(rigs[0]), tmp_path, 1, slow(FakeS3()), clock=virtual(), metadata_ttl=0)


# --- what a close promises, in a combined publish ----------------------------------------------
def test_when_a_combined_publish_fails_every_close_in_it_fails_and_none_is_published(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        for pid in (1, 2, 3, 4, 5):
            await r.read_file(IDX, pid=pid)
        r.s3.freeze("PutObject")
        first = await rewrite_open(r, 1, index(desc("base", "base"), desc("a", "a")))
        result: dict[str, int | None] = {}

        async def close(name: str, fh: int) -> None:
            result[name] = await failing_errno(r.close(fh))

        async with trio.open_nursery() as n:
            n.start_soon(close, "a", first)
            await trio.testing.wait_all_tasks_blocked()  # a's PUT is in flight (frozen)
            for pid, name in ((2, "b"), (3, "c"), (4, "d")):
                fh = await rewrite_open(r, pid, index(desc("base", "base"), desc(name, name)))
                n.start_soon(close, name, fh)
            await trio.testing.wait_all_tasks_blocked()  # b, c, d wait for the next publish
            puts = iter(range(100))
            r.s3.fail("PutObject", store.Unavailable, when=lambda call: call.key == IDX and next(puts) == 1)
            r.s3.thaw()  # a's PUT succeeds; the one PUT of b + c + d fails
        assert result == {"a": None, "b": errno.EIO, "c": errno.EIO, "d": errno.EIO}
        assert tags(r.obj(IDX)) == ["a", "base"]
        await r.write_file(IDX, index(desc("base", "base"), desc("e", "e")), pid=5)  # a later close
        assert tags(r.obj(IDX)) == ["a", "base", "e"]  # and nothing of b, c, d ever appears
        await r.ops.shutdown()
        assert tags(r.obj(IDX)) == ["a", "base", "e"]

    run(go, tmp_path)


def test_a_close_that_keeps_losing_races_fails_at_its_deadline_and_publishes_nothing(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        await r.read_file(IDX, pid=7)
        fh = await rewrite_open(r, 7, index(desc("base", "base"), desc("mine", "mine")))
        stop = trio.Event()

        async def another_host() -> None:  # rewrites index.json faster than a round trip
            n = 0
            while not stop.is_set():
                n += 1
                r.s3.seed(IDX, index(desc("base", "base"), desc(f"o{n}", "other")))
                await trio.sleep(LATENCY / 5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(another_host)
            t0 = trio.current_time()
            err = await failing_errno(r.ops.flush(fh))
            waited = trio.current_time() - t0
            stop.set()
        assert err == errno.EIO
        assert 2.0 <= waited < 4.0  # op_timeout 4: it gave up after half of it, not at the FUSE deadline
        await r.ops.release(fh)
        assert tags(r.obj(IDX)) == ["base", "other"]
        await r.write_file("repo/other", b"x")  # the mount goes on; the failed close stays unpublished
        await r.ops.shutdown()
        assert "mine" not in tags(r.obj(IDX))

    run_mounts(lambda rigs: go(rigs[0]), tmp_path, 1, slow(FakeS3()), clock=virtual(), op_timeout=4)


def test_a_rewrite_that_is_no_index_fails_alone_and_the_others_of_its_publish_go_through(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        for pid in (1, 2, 3):
            await r.read_file(IDX, pid=pid)
        r.s3.freeze("PutObject")
        result: dict[str, int | None] = {}

        async def close(name: str, fh: int) -> None:
            result[name] = await failing_errno(r.close(fh))

        async with trio.open_nursery() as n:
            n.start_soon(close, "a", await rewrite_open(r, 1, index(desc("base", "base"), desc("a", "a"))))
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(close, "empty", await r.open(IDX, os.O_WRONLY | os.O_TRUNC, pid=2))  # a forked child's close
            n.start_soon(close, "c", await rewrite_open(r, 3, index(desc("base", "base"), desc("c", "c"))))
            await trio.testing.wait_all_tasks_blocked()
            r.s3.thaw()
        assert result == {"a": None, "empty": errno.EIO, "c": None}
        assert tags(r.obj(IDX)) == ["a", "base", "c"]

    run(go, tmp_path)


def test_a_tag_moved_by_two_closes_of_one_publish_goes_to_the_later_close(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("old", "latest")))
        for pid in (1, 2, 3):
            await r.read_file(IDX, pid=pid)
        r.s3.freeze("PutObject")
        async with trio.open_nursery() as n:
            n.start_soon(r.close, await rewrite_open(r, 1, index(desc("other", "other"))))
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(r.close, await rewrite_open(r, 2, index(desc("earlier", "latest"))))
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(r.close, await rewrite_open(r, 3, index(desc("later", "latest"))))
            await trio.testing.wait_all_tasks_blocked()
            r.s3.thaw()
        final = json.loads(r.obj(IDX))["manifests"]
        latest = [d["digest"] for d in final if d.get("annotations", {}).get(REF) == "latest"]
        assert latest == [desc("later")["digest"]]
        assert sorted(tags(r.obj(IDX))) == ["latest", "other"]

    run(go, tmp_path)


def test_a_close_cancelled_while_it_waits_for_the_next_publish_is_never_published(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        for pid in (1, 2):
            await r.read_file(IDX, pid=pid)
        r.s3.freeze("PutObject")
        b = await rewrite_open(r, 2, index(desc("base", "base"), desc("b", "b")))
        async with trio.open_nursery() as n:
            n.start_soon(r.close, await rewrite_open(r, 1, index(desc("base", "base"), desc("a", "a"))))
            await trio.testing.wait_all_tasks_blocked()  # a's PUT in flight
            with trio.CancelScope() as scope:

                async def cancel() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # b waits behind a's publish
                    scope.cancel()

                n.start_soon(cancel)
                await r.ops.flush(b)  # withdrawn when cancelled
            assert scope.cancelled_caught
            r.s3.thaw()
        await r.ops.release(b)
        await r.write_file("repo/x", b"1")
        assert tags(r.obj(IDX)) == ["a", "base"]
        await r.ops.shutdown()
        assert tags(r.obj(IDX)) == ["a", "base"]

    run(go, tmp_path)


def test_a_close_cancelled_while_its_put_is_in_flight_answers_with_the_outcome(tmp_path):
    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        await r.read_file(IDX, pid=1)
        fh = await rewrite_open(r, 1, index(desc("base", "base"), desc("a", "a")))
        r.s3.freeze("PutObject")
        async with trio.open_nursery() as n:
            with trio.CancelScope() as scope:

                async def cancel_then_thaw() -> None:
                    await trio.testing.wait_all_tasks_blocked()  # the PUT is out
                    scope.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    r.s3.thaw()

                n.start_soon(cancel_then_thaw)
                await r.ops.flush(fh)  # returns 0: the PUT holding it went through
        assert not scope.cancelled_caught
        assert tags(r.obj(IDX)) == ["a", "base"]
        await r.ops.release(fh)

    run(go, tmp_path)


@pytest.mark.parametrize("conditional", [True, False])
def test_closes_waiting_together_on_one_mount_merge_even_without_conditional_writes(tmp_path, conditional):
    """An endpoint without conditional writes: last writer wins between mounts (said at mount
    time), but the closes one mount combines still merge with each other."""

    async def go(r: Rig):
        await r.mkdir("repo")
        await r.write_file(IDX, index(desc("base", "base")))
        for pid in (1, 2, 3):
            await r.read_file(IDX, pid=pid)
        r.s3.freeze("PutObject")
        async with trio.open_nursery() as n:
            for pid in (1, 2, 3):
                n.start_soon(r.close, await rewrite_open(r, pid, index(desc("base", "base"), desc(f"t{pid}", f"t{pid}"))))
            await trio.testing.wait_all_tasks_blocked()
            r.s3.thaw()
        assert tags(r.obj(IDX)) == ["base", "t1", "t2", "t3"]

    run(go, tmp_path, FakeS3(conditional_writes=conditional))
