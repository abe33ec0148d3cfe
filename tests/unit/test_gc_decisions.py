"""The mark and sweep decisions of ``ocifs gc``, as pure functions over in-memory data."""

from __future__ import annotations

import pytest

from ocifs.gc import condemn, etag_verdict, spare_reason, survivors
from ocifs.gcmarks import CLOCK_SKEW, LEASE, PENDING, SWEEPING, SWEPT, Mark, keep_key, watched_prefixes
from ocifs.oci import Layout, Reach, group_layouts, is_internal
from ocifs.store import ObjectInfo

H = [f"{i:064x}" for i in range(10)]


def blob(root: str, i: int, etag: str = '"e"') -> ObjectInfo:
    return ObjectInfo(f"{root}blobs/sha256/{H[i]}", 10, 0.0, etag)


def layout(root: str, *ids: int) -> Layout:
    lay = Layout(root)
    for i in ids:
        lay.blobs[f"sha256:{H[i]}"] = blob(root, i)
    return lay


def reach(*ids: int) -> Reach:
    return Reach({f"sha256:{H[i]}" for i in ids}, set())


# --- mark -----------------------------------------------------------------------------------
def test_condemn_takes_listed_blobs_nothing_reaches():
    a = layout("a/", 0, 1, 2)
    got = condemn([a], {"a/": reach(0)}, exclude=set())
    assert set(got) == {f"a/blobs/sha256/{H[1]}", f"a/blobs/sha256/{H[2]}"}


def test_condemn_never_guesses_for_a_layout_without_a_valid_index():
    a = layout("a/", 0, 1)
    assert condemn([a], {}, exclude=set()) == {}


def test_condemn_skips_keys_a_pending_mark_already_holds():
    a = layout("a/", 0, 1, 2)
    held = {f"a/blobs/sha256/{H[1]}"}
    assert set(condemn([a], {"a/": reach(0)}, exclude=held)) == {f"a/blobs/sha256/{H[2]}"}


def test_gc_bookkeeping_is_no_layout_and_no_blob():
    objs = [
        ObjectInfo("index.json", 1, 0, '"i"'),
        ObjectInfo(f"blobs/sha256/{H[0]}", 1, 0, '"b"'),
        ObjectInfo(".ocifs/gc/marks/r1.json", 1, 0, '"m"'),
        ObjectInfo(f".ocifs/gc/keep/r1/blobs/sha256/{H[1]}", 1, 0, '"k"'),
        ObjectInfo("team/.ocifs/gc/marks/r2.json", 1, 0, '"m"'),
        ObjectInfo(f"team/.ocifs/gc/keep/r2/blobs/sha256/{H[2]}", 1, 0, '"k"'),
        ObjectInfo("team/.ocifs/index.json", 1, 0, '"i"'),
    ]
    lays = group_layouts("", objs)
    assert [lay.root for lay in lays] == [""]
    assert set(lays[0].blobs) == {f"sha256:{H[0]}"}
    assert is_internal(".ocifs/gc/x") and is_internal("a/b/.ocifs/x") and not is_internal("a/.ocifsx/y")


# --- sweep ----------------------------------------------------------------------------------
def test_survivors_are_unreached_blobs_no_due_mark_condemns_plus_kept_ones():
    lay = layout("", 0, 1, 2, 3, 4)
    reached = {f"sha256:{H[0]}"}
    doomed = {f"sha256:{H[1]}", f"sha256:{H[2]}"}
    kept = {f"sha256:{H[2]}"}
    # 3 and 4: unreachable but in no due mark (younger, or another mark's): they survive, and
    # so must whatever they reach. 2: doomed but kept. 1: doomed.
    assert survivors(lay, reached, doomed, kept) == {f"sha256:{H[i]}" for i in (2, 3, 4)}


@pytest.mark.parametrize(
    "listed,judged,kept,reachable,want",
    [
        (True, True, False, False, None),
        (False, True, False, False, "gone already"),
        (True, False, False, False, "its layout has no valid index.json"),
        (True, True, True, False, "kept by a mount"),
        (True, True, False, True, "reachable again"),
        (True, True, True, True, "kept by a mount"),
    ],
)
def test_spare_reason(listed, judged, kept, reachable, want):
    assert spare_reason("k", listed=listed, judged=judged, kept=kept, reachable=reachable) == want


def test_etag_verdict_deletes_only_the_marked_object():
    assert etag_verdict('"a"', '"a"') is None
    assert etag_verdict('"a"', '"b"') == "changed since it was marked"
    assert etag_verdict('"a"', None) == "gone already"


# --- the mark object ------------------------------------------------------------------------
def test_a_mark_round_trips_and_a_swept_one_drops_its_list():
    m = Mark("r1", 1000.0, 60.0, {"a": '"1"', "b": '"2"'}, host="h")
    assert Mark.decode(m.encode()) == m
    s = Mark("r1", 1000.0, 60.0, {}, state=SWEEPING, sweep_started=1100.0)
    assert Mark.decode(s.encode()).sweep_started == 1100.0
    t = Mark("r1", 1000.0, 60.0, {"a": '"1"'}, state=SWEPT, swept_at=1200.0, deleted=1)
    back = Mark.decode(t.encode())
    assert back.condemned == {} and back.deleted == 1 and back.swept_at == 1200.0


@pytest.mark.parametrize("data", [b"", b"[]", b'{"ocifs_gc_mark": 2}', b'{"ocifs_gc_mark": 1, "state": "odd"}', b'{"ocifs_gc_mark":1}'])
def test_a_foreign_object_is_not_a_mark(data):
    with pytest.raises(ValueError):
        Mark.decode(data)


def test_a_mark_is_due_after_its_own_grace_and_the_runs():
    m = Mark("r", 1000.0, 60.0, {})
    assert not m.due(1059.0, 0)
    assert m.due(1060.0, 0)
    assert not m.due(1060.0, 120)  # a run with a longer grace waits longer
    assert m.due(1120.0, 120)


def test_a_sweep_is_abandoned_only_after_its_lease_and_the_clock_skew():
    m = Mark("r", 1000.0, 60.0, {}, state=SWEEPING, sweep_started=2000.0)
    assert not m.abandoned(2000.0 + LEASE + CLOCK_SKEW)
    assert m.abandoned(2000.0 + LEASE + CLOCK_SKEW + 1)
    assert m.due(2000.0 + LEASE + CLOCK_SKEW + 1, 0)
    assert not Mark("r", 1000.0, 60.0, {}, state=SWEPT, swept_at=1).due(1e12, 0)
    assert Mark("r", 1.0, 0.0, {}).state == PENDING


def test_mounts_watch_every_directory_above_a_blob_for_marks():
    assert watched_prefixes(f"blobs/sha256/{H[0]}") == [""]
    assert watched_prefixes(f"team/app/blobs/sha256/{H[0]}") == ["", "team/", "team/app/"]
    assert watched_prefixes("team/app/index.json") is None
    assert watched_prefixes(f"team/app/blobs/sha256/{H[0]}/x") is None


def test_keep_keys_are_per_run_and_never_look_like_blobs():
    k = keep_key("p/", "run1", f"p/app/blobs/sha256/{H[0]}")
    assert k.startswith("p/.ocifs/gc/keep/run1/") and "blobs/" not in k
    assert k != keep_key("p/", "run2", f"p/app/blobs/sha256/{H[0]}")
