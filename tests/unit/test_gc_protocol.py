"""The gc protocol end to end without S3: real ``Collector`` runs and real mount-side ``GcMarks``
on an in-memory store, interleaved step by step under trio's mock clock."""

from __future__ import annotations

import json

import pytest
import trio

from ocifs.gcmarks import LEASE, PENDING, RETENTION, SWEEPING, SWEPT, GuardedStore, Mark, keep_key, mark_key

from fakes3 import FakeS3

from .gcsim import Repo, gc, keys, marks, requests, run, store, wall


def mark_objects(s3: FakeS3, prefix: str = "") -> list[Mark]:
    return [Mark.decode(v.data) for k, v in sorted(s3.objects.items()) if k.startswith(f"{prefix}.ocifs/gc/marks/")]


def blob_keys(s3: FakeS3) -> set[str]:
    return {k for k in s3.objects if "/blobs/" in k and ".ocifs/" not in k}


# --- mark, then sweep -----------------------------------------------------------------------
def test_unreachable_blobs_are_marked_first_and_deleted_only_after_the_grace():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        r1 = await gc(s3, grace=60)
        assert {o.key for o in r1.condemned} == keys(v2)
        assert r1.deleted == [] and blob_keys(s3) == keys(v1) | keys(v2)
        await trio.sleep(30)
        r2 = await gc(s3, grace=60)
        assert r2.deleted == [] and r2.condemned == [] and r2.pending == [r1.run]
        await trio.sleep(30)
        r3 = await gc(s3, grace=60)
        assert {o.key for o in r3.deleted} == keys(v2)
        assert blob_keys(s3) == keys(v1)
        assert [m.state for m in mark_objects(s3)] == [SWEPT]

    run(go)


def test_grace_zero_marks_and_sweeps_in_one_run():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        r = await gc(s3, grace=0)
        assert {o.key for o in r.deleted} == keys(v2) and r.swept == [r.run]
        assert blob_keys(s3) == keys(v1)

    run(go)


def test_dry_run_writes_nothing_and_says_what_it_would_condemn_and_delete():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2, v3 = repo.image(b"one"), repo.image(b"two"), repo.image(b"three")
        repo.tag(v1, "v1")
        repo.tag(v3, "v3")
        await gc(s3, grace=10)  # condemns v2
        repo.untag(v3)
        await trio.sleep(10)
        before = dict(s3.objects)
        writes = requests(s3).get("PutObject", 0) + requests(s3).get("DeleteObject", 0)
        r = await gc(s3, grace=10, dry_run=True)
        assert s3.objects == before and requests(s3).get("PutObject", 0) + requests(s3).get("DeleteObject", 0) == writes
        assert {o.key for o in r.deleted} == keys(v2)  # would sweep
        assert {o.key for o in r.condemned} == keys(v3)  # would mark

    run(go)


def test_a_manifest_written_after_the_list_and_tagged_before_the_index_read_keeps_its_layers():
    class LateTag(FakeS3):
        """After gc lists the layout, a push writes a manifest reusing an unreachable layer
        and tags it (both before gc reads index.json)."""

        armed = True

        async def list_page(self, prefix, token=None, delimiter="/", max_keys=1000):
            page = await super().list_page(prefix, token, delimiter, max_keys)
            if self.armed and prefix == "":
                self.armed = False
                late = self.repo.image(b"reused")  # same layer bytes: same key
                self.repo.tag(late, "late")
            return page

    async def go():
        s3 = LateTag(clock=wall)
        s3.repo = repo = Repo(s3)
        old = repo.image(b"reused")
        v1 = repo.image(b"one")
        repo.tag(v1, "v1")
        del s3.objects[old["manifest"]]  # only the layer and config are left over
        r = await gc(s3, grace=0)
        assert old["layer"] in s3.objects and old["config"] in s3.objects
        assert r.deleted == []

    run(go)


# --- keeps ----------------------------------------------------------------------------------
def test_a_blob_a_mount_checks_after_the_mark_survives_the_sweep():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60)).run
        mount = marks(s3)
        assert await mount.keep_if_condemned(v2["layer"], trio.current_time())  # oras: stat before reuse
        assert keep_key("", run1, v2["layer"]) in s3.objects
        await trio.sleep(60)
        r = await gc(s3, grace=60)
        assert (v2["layer"], "kept by a mount") in r.spared
        assert v2["layer"] in s3.objects
        assert {o.key for o in r.deleted} == {v2["manifest"], v2["config"]}
        assert not [k for k in s3.objects if k.startswith(".ocifs/gc/keep/")]  # cleaned up with the sweep

    run(go)


def test_a_kept_manifest_keeps_its_config_and_layers():
    # `oras tag` of an old untagged manifest stats only the manifest.
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, old = repo.image(b"one"), repo.image(b"old")
        repo.tag(v1, "v1")
        await gc(s3, grace=60)
        await marks(s3).keep_if_condemned(old["manifest"], trio.current_time())
        await trio.sleep(60)
        r = await gc(s3, grace=60)
        assert keys(old) <= s3.objects.keys() and r.deleted == []
        assert {(old["config"], "reachable again"), (old["layer"], "reachable again")} <= set(r.spared)

    run(go)


def test_a_manifest_kept_under_a_younger_mark_keeps_layers_an_older_mark_condemned():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1 = repo.image(b"one")
        repo.tag(v1, "v1")
        layer = repo.key(repo.put_blob(b"layer pushed alone"))
        older = (await gc(s3, grace=60)).run  # condemns the lone layer
        await trio.sleep(30)
        m = repo.image(b"layer pushed alone")  # a manifest using it appears, untagged
        younger = await gc(s3, grace=60)  # condemns the manifest and config, not the layer again
        assert {o.key for o in younger.condemned} == {m["manifest"], m["config"]}
        await trio.sleep(30)
        r = await gc(s3, grace=60)  # sweeps the older mark only: the manifest survives it
        assert r.swept == [older] and layer in s3.objects
        assert (layer, "reachable again") in r.spared

    run(go)


@pytest.mark.parametrize("ttl", [1.0, 1000.0], ids=["view-refreshed", "view-says-pending"])
def test_a_keep_that_comes_after_the_sweep_listed_keeps_waits_and_asks_s3_again(ttl):
    # ttl 1000: the mount's view still says pending, so only the HEAD of the mark after the
    # keep (the handshake) can tell it that the sweep began.
    class Paused(FakeS3):
        """Holds the sweeper at its first ETag check (keeps already listed)."""

        async def head(self, key):
            if self.hold is not None and key == self.victim:
                self.at_head.set()
                await self.hold.wait()
            return await super().head(key)

    async def go():
        s3 = Paused(clock=wall)
        s3.hold, s3.at_head = trio.Event(), trio.Event()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        s3.victim = v2["layer"]
        await gc(s3, grace=60)
        mount = marks(s3, ttl=ttl)
        await trio.sleep(60)
        await mount.keep_if_condemned(v1["layer"], trio.current_time())  # the view has the mark, pending
        results = {}

        async def lookup():
            results["valid"] = await mount.keep_if_condemned(v2["layer"], confirmed=0.0)
            results["deleted_by_then"] = v2["layer"] not in s3.objects

        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc, s3, 60)
            await s3.at_head.wait()
            hold = s3.hold
            s3.hold = None  # only the sweeper's first check waits
            nursery.start_soon(lookup)
            await trio.sleep(5)
            assert "valid" not in results, "the mount answered while the sweep was running"
            hold.set()
        assert results == {"valid": False, "deleted_by_then": True}

    run(go)


def test_a_keep_confirmed_just_before_the_sweep_switches_the_mark_is_honoured():
    class PausedSwitch(FakeS3):
        """Holds the sweeper just before it switches the mark to sweeping."""

        async def put(self, key, body, meta, if_match=None, if_none_match=False):
            if self.hold is not None and b'"state":"sweeping"' in body:
                self.at_switch.set()
                await self.hold.wait()
            return await super().put(key, body, meta, if_match=if_match, if_none_match=if_none_match)

    async def go():
        s3 = PausedSwitch(clock=wall)
        s3.hold, s3.at_switch = trio.Event(), trio.Event()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        await gc(s3, grace=60)
        await trio.sleep(60)
        mount = marks(s3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc, s3, 60)
            await s3.at_switch.wait()
            assert await mount.keep_if_condemned(v2["layer"], trio.current_time())  # still pending
            s3.hold.set()
        assert v2["layer"] in s3.objects

    run(go)


def test_a_mount_that_never_saw_a_mark_asks_s3_again_after_a_sweep():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        mount = marks(s3, slack=75.0)
        known_at = trio.current_time()
        assert await mount.keep_if_condemned(v2["layer"], known_at)  # a node cached long ago
        await trio.sleep(10)
        await gc(s3, grace=0)  # marked and swept between two looks of the mount
        await trio.sleep(10)
        assert not await mount.keep_if_condemned(v2["layer"], known_at)
        assert await mount.keep_if_condemned(v2["layer"], known_at)  # asked once: fine again
        assert await mount.keep_if_condemned(v1["layer"], trio.current_time() + 80)  # learnt later

    run(go)


def test_recently_answered_blobs_are_kept_when_a_mark_appears():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        mount = marks(s3)
        await mount.keep_if_condemned(v2["layer"], trio.current_time())  # a push checks it...
        await trio.sleep(5)
        run1 = (await gc(s3, grace=60)).run  # ... gc marks it before the push tags ...
        await trio.sleep(5)
        await mount.keep_if_condemned(v1["config"], trio.current_time())  # ... any lookup refreshes
        assert keep_key("", run1, v2["layer"]) in s3.objects

    run(go)


def test_publishing_a_condemned_blob_keeps_it():
    # Equal content has an equal ETag: the sweep's ETag check cannot see a re-upload.
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60)).run
        guarded = GuardedStore(s3, marks(s3))
        await guarded.put(v2["layer"], b"two", {})
        assert keep_key("", run1, v2["layer"]) in s3.objects
        await trio.sleep(60)
        await gc(s3, grace=60)
        assert v2["layer"] in s3.objects

    run(go)


def test_a_blob_whose_content_changed_since_the_mark_is_not_deleted():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        await gc(s3, grace=60)
        s3.seed(v2["layer"], b"other bytes, written around the mount")
        await trio.sleep(60)
        r = await gc(s3, grace=60)
        assert (v2["layer"], "changed since it was marked") in r.spared and v2["layer"] in s3.objects

    run(go)


# --- cost -----------------------------------------------------------------------------------
def test_lookups_cost_one_list_per_watched_prefix_per_ttl_and_nothing_else():
    async def go():
        s3 = store()
        repo = Repo(s3, root="team/app/")
        v1 = repo.image(b"one")
        repo.tag(v1, "v1")
        mount = marks(s3, ttl=1.0)
        for _ in range(100):
            assert await mount.keep_if_condemned(v1["layer"], trio.current_time())
            await trio.sleep(0.001)
        assert requests(s3) == {"ListObjectsV2": 3}  # "", "team/", "team/app/"
        await trio.sleep(1)
        await mount.keep_if_condemned(v1["layer"], trio.current_time())
        assert requests(s3) == {"ListObjectsV2": 6}
        assert await mount.keep_if_condemned("team/app/index.json") and requests(s3) == {"ListObjectsV2": 6}

    run(go)


def test_the_watched_prefixes_are_listed_at_once_not_one_after_another():
    async def go():
        s3 = store()
        repo = Repo(s3, root="team/app/")
        v1 = repo.image(b"one")
        repo.tag(v1, "v1")
        s3.delay("ListObjectsV2", 1.0)  # one round trip
        mount = marks(s3, ttl=10.0)
        t0 = trio.current_time()
        assert await mount.keep_if_condemned(v1["layer"], t0)
        assert requests(s3) == {"ListObjectsV2": 3}  # "", "team/", "team/app/"
        assert trio.current_time() - t0 == pytest.approx(1.0)

    run(go)


def test_a_condemned_key_costs_one_keep_and_one_head_per_run():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        await gc(s3, grace=60)
        s3.stats.clear()
        mount = marks(s3)
        for _ in range(10):
            await mount.keep_if_condemned(v2["layer"], trio.current_time())
        assert requests(s3) == {"ListObjectsV2": 2, "GetObject": 1, "PutObject": 1, "HeadObject": 1}  # "", "app/"

    run(go)


def test_marks_of_a_gc_on_a_parent_prefix_are_seen():
    async def go():
        s3 = store()
        repo = Repo(s3, root="team/app/")
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60, prefix="team/")).run
        await marks(s3).keep_if_condemned(v2["layer"], trio.current_time())
        assert keep_key("team/", run1, v2["layer"]) in s3.objects

    run(go)


# --- concurrency and failures ---------------------------------------------------------------
def test_two_gc_runs_sweeping_at_once_sweep_each_mark_once():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, _ = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60)).run
        await trio.sleep(60)
        reports = []

        async def one():
            reports.append(await gc(s3, grace=60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
        assert sorted(len(r.deleted) for r in reports) == [0, 3]
        assert [run1] in [r.busy for r in reports] + [r.swept for r in reports]
        assert blob_keys(s3) == keys(v1)

    run(go)


def test_a_sweep_whose_lease_runs_out_goes_back_to_pending_and_a_later_run_finishes_it():
    class SlowDeletes(FakeS3):
        slow = True

        async def delete(self, key):
            if self.slow and "/blobs/" in key:
                await trio.sleep(LEASE)
            await super().delete(key)

    async def go():
        s3 = SlowDeletes(clock=wall)
        repo = Repo(s3)
        v1, _ = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60)).run
        await trio.sleep(60)
        r = await gc(s3, grace=60)
        assert r.incomplete == [run1]
        assert [m.state for m in mark_objects(s3)] == [PENDING]
        s3.slow = False
        r = await gc(s3, grace=60)
        assert r.swept == [run1] and blob_keys(s3) == keys(v1)

    run(go)


def test_a_mount_does_not_wait_for_an_abandoned_sweep_and_the_takeover_honours_its_keep():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        run1 = (await gc(s3, grace=60)).run
        key = mark_key("", run1)
        mark = Mark.decode(s3.objects[key].data)
        # A gc host died right after switching the mark to sweeping, long ago.
        dead = Mark(mark.run, mark.time, mark.grace, mark.condemned, state=SWEEPING, sweep_started=mark.time)
        s3.seed(key, dead.encode())
        await trio.sleep(LEASE + 100)
        started = trio.current_time()
        assert not await marks(s3).keep_if_condemned(v2["layer"], 0.0)  # abandoned: maybe deleted
        assert trio.current_time() - started < 1
        r = await gc(s3, grace=60)
        assert r.swept == [run1] and v2["layer"] in s3.objects

    run(go)


def test_old_swept_marks_and_orphaned_keeps_are_removed():
    async def go():
        s3 = store()
        repo = Repo(s3)
        v1, v2 = repo.image(b"one"), repo.image(b"two")
        repo.tag(v1, "v1")
        await gc(s3, grace=0)
        s3.seed(keep_key("", "gone-run", v2["layer"]), b"x")
        assert [m.state for m in mark_objects(s3)] == [SWEPT]
        await gc(s3, grace=0)
        assert keep_key("", "gone-run", v2["layer"]) not in s3.objects
        assert len(mark_objects(s3)) == 1  # kept for RETENTION, so mounts learn of the sweep
        await trio.sleep(RETENTION + 1)
        r = await gc(s3, grace=0)
        assert mark_objects(s3) == [] and r.removed_marks == 1

    run(go)


def test_a_mark_that_is_not_ours_is_ignored():
    async def go():
        s3 = store()
        Repo(s3).tag(Repo(s3).image(b"one"), "v1")
        s3.seed(".ocifs/gc/marks/junk.json", json.dumps({"hello": 1}).encode())
        r = await gc(s3, grace=0)
        assert r.deleted == [] and ".ocifs/gc/marks/junk.json" in s3.objects

    run(go)
