import json

import pytest

from ocifs.indexmerge import NotAnIndex, merge


def desc(digest, tag=None):
    d = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{digest}", "size": 1}
    if tag:
        d["annotations"] = {"org.opencontainers.image.ref.name": tag}
    return d


def index(*descs):
    return json.dumps({"schemaVersion": 2, "manifests": list(descs)}).encode()


def tags(data):
    return sorted(d["annotations"]["org.opencontainers.image.ref.name"] for d in json.loads(data)["manifests"] if "annotations" in d)


def test_both_sides_adding_tags_keeps_all_of_them():
    base = index(desc("a", "v1"))
    ours = index(desc("a", "v1"), desc("b", "v2"))
    theirs = index(desc("a", "v1"), desc("c", "v3"))
    merged, conflicts = merge(base, ours, theirs)
    assert tags(merged) == ["v1", "v2", "v3"]
    assert conflicts == []


def test_removal_by_ours_is_kept():
    base = index(desc("a", "v1"), desc("b", "v2"))
    ours = index(desc("a", "v1"))
    theirs = index(desc("a", "v1"), desc("b", "v2"), desc("c", "v3"))
    merged, _ = merge(base, ours, theirs)
    assert tags(merged) == ["v1", "v3"]


def test_tag_moved_by_both_sides_goes_to_this_writer_and_is_reported():
    base = index(desc("a", "latest"))
    ours = index(desc("b", "latest"))
    theirs = index(desc("c", "latest"))
    merged, conflicts = merge(base, ours, theirs)
    m = json.loads(merged)["manifests"]
    assert [d["digest"] for d in m] == ["sha256:b"]
    assert len(conflicts) == 1 and "latest" in conflicts[0]


def test_no_base_means_ours_adds_everything():
    merged, _ = merge(None, index(desc("b", "v2")), index(desc("c", "v3")))
    assert tags(merged) == ["v2", "v3"]


def test_untagged_referrers_survive():
    base = index(desc("a", "v1"))
    ours = index(desc("a", "v1"), desc("sig"))
    theirs = index(desc("a", "v1"), desc("c", "v3"))
    merged, _ = merge(base, ours, theirs)
    assert {d["digest"] for d in json.loads(merged)["manifests"]} == {"sha256:a", "sha256:sig", "sha256:c"}


def test_garbage_cannot_be_merged():
    with pytest.raises(NotAnIndex):
        merge(None, b"{not json", index())


def test_a_base_that_is_no_index_counts_as_no_base():
    merged, _ = merge(b"", index(desc("b", "v2")), index(desc("a", "v1")))
    assert tags(merged) == ["v1", "v2"]


def test_ours_that_is_no_index_cannot_be_merged():
    with pytest.raises(NotAnIndex):
        merge(index(desc("a", "v1")), b'{"schemaVersion": 2, "manif', index(desc("a", "v1")))


# --- combine: many rewrites onto one current version, as successive publishes would ----------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ocifs.indexmerge import combine  # noqa: E402


def sequential(current, changes):
    """The reference: publish each change on its own, in order (a conditional PUT that wins
    when its writer saw the current version, else a merge); the index that is left."""
    etag, body = current if current is not None else (None, None)
    for n, (seen, ours) in enumerate(changes):
        if body is None or (seen is not None and seen[0] == etag):
            body = ours
        else:
            body, _ = merge(seen[1] if seen else None, ours, body)
        etag = f'"published-{n}"'  # a new version: no writer saw it
    return body


def test_a_rewrite_of_exactly_the_current_version_is_published_byte_for_byte():
    current = ('"e1"', index(desc("a", "v1")))
    ours = b'{"schemaVersion": 2,\n  "manifests": []}'  # a writer's own formatting, and a delete
    assert combine(current, [(current, ours)]).body == ours


def test_combined_rewrites_keep_every_writers_tag_and_the_later_one_wins_a_moved_tag():
    current = ('"e1"', index(desc("a", "latest")))
    changes = [
        (current, index(desc("a", "latest"), desc("b", "v2"))),
        (current, index(desc("c", "latest"))),
        (current, index(desc("a", "latest"), desc("d", "latest"))),
    ]
    got = combine(current, changes)
    m = json.loads(got.body)["manifests"]
    assert {d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"] for d in m} == {"v2": "sha256:b", "latest": "sha256:d"}
    assert len(m) == 2 and got.rejected == {} and any("latest" in n for n in got.notes)


def test_a_rewrite_that_is_no_index_is_rejected_only_when_it_has_to_be_merged():
    current = ('"e1"', index(desc("a", "v1")))
    assert combine(current, [(current, b"")]).body == b""  # what its writer saw: a plain overwrite
    got = combine(current, [(current, index(desc("a", "v1"), desc("b", "v2"))), (current, b"")])
    assert got.rejected == {1: "changed meanwhile, and this write is not an image index"}
    assert tags(got.body) == ["v1", "v2"]
    assert combine(current, [(('"old"', b"x"), b"{")]).body is None  # nothing left to publish


def test_a_current_version_that_is_no_index_is_replaced_by_the_first_rewrite_that_is_one():
    got = combine(('"e1"', b"garbage"), [(('"e0"', index()), index(desc("b", "v2")))])
    assert tags(got.body) == ["v2"] and got.notes and "not an image index" in got.notes[0]


_names = st.sampled_from("abcdefgh")
_tags = st.sampled_from(["v1", "v2", "v3", "latest", None])
_descs = st.lists(st.tuples(_names, _tags), max_size=5).map(lambda xs: [desc(n, t) for n, t in xs])


@settings(max_examples=300, deadline=None)
@given(
    start=_descs,
    history=st.lists(_descs, max_size=3),
    writes=st.lists(st.tuples(st.integers(0, 3), st.booleans(), _descs, st.lists(st.integers(0, 5), max_size=3)), max_size=6),
)
def test_combining_rewrites_leaves_exactly_what_publishing_them_one_by_one_would(start, history, writes):
    # versions the writers may have seen: the current one and older ones
    versions = [(f'"v{i}"', index(*ds)) for i, ds in enumerate([start, *history])]
    current = versions[-1]
    changes = []
    for which, saw_nothing, add, drop in writes:
        seen = None if saw_nothing else versions[min(which, len(versions) - 1)]
        mine = json.loads(seen[1])["manifests"] if seen else []
        mine = [d for i, d in enumerate(mine) if i not in drop] + add
        changes.append((seen, index(*mine)))
    assert combine(current, changes).body == (sequential(current, changes) if changes else None)


def test_a_null_manifest_list_is_an_empty_index():
    """zot (Go) creates a repository's index.json as {"schemaVersion":2,"manifests":null}; two
    zots creating one repository at once must merge, not fail the second with EIO."""
    zot_new = b'{"schemaVersion":2,"manifests":null}'
    merged, conflicts = merge(None, zot_new, zot_new)
    assert not json.loads(merged)["manifests"] and conflicts == []  # (the bytes as written)
    merged, _ = merge(zot_new, index(desc("b", "v2")), index(desc("a", "v1")))
    assert tags(merged) == ["v1", "v2"]
    merged, _ = merge(index(desc("a", "v1")), zot_new, index(desc("a", "v1"), desc("c", "v3")))
    assert tags(merged) == ["v3"]
