"""The startup probe of conditional writes checks both headers index.json relies on."""

from __future__ import annotations

import trio

from fakes3 import FakeS3
from ocifs import store
from ocifs.config import Config
from ocifs.namespace import Namespace
from ocifs.publish import Publisher
from ocifs.reader import Reader
from ocifs.cache import ChunkCache


class IfNoneMatchOnly(FakeS3):
    """An endpoint that honours If-None-Match but ignores If-Match (some S3 clones)."""

    async def put(self, key, body, meta, if_match=None, if_none_match=False):
        return await super().put(key, body, meta, None, if_none_match)


class DeniesWrites(FakeS3):
    async def put(self, key, body, meta, if_match=None, if_none_match=False):
        raise store.Denied("PutObject: access denied")


def probe(s3: FakeS3) -> tuple[bool, Publisher]:
    cfg = Config(bucket="b")
    s3.limiter = trio.CapacityLimiter(4)
    ns = Namespace(cfg, s3)
    pub = Publisher(cfg, s3, ns, Reader(cfg, s3, ChunkCache(16 << 20, 1 << 20)))
    return trio.run(pub.probe_conditional_writes), pub


def test_an_endpoint_honouring_both_headers_passes():
    ok, pub = probe(FakeS3())
    assert ok and pub.conditional_writes


def test_an_endpoint_without_conditional_writes_falls_back_loudly(caplog):
    ok, pub = probe(FakeS3(conditional_writes=False))
    assert not ok and not pub.conditional_writes
    assert "last-writer-wins" in caplog.text


def test_if_none_match_alone_is_not_enough():
    ok, pub = probe(IfNoneMatchOnly())
    assert not ok and not pub.conditional_writes


def test_read_only_credentials_make_writes_fail_fast():
    ok, pub = probe(DeniesWrites())
    assert pub.writes_denied


def test_the_probe_leaves_nothing_behind():
    s3 = FakeS3()
    probe(s3)
    assert s3.objects == {}
