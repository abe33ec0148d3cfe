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
