"""What only the fake does: where it follows AWS rather than MinIO, and its test-side API
(clock, faults, delays, freezing). MinIO cannot be made to do these, so they run on the fake
alone; the behaviours both share are in the other modules of this directory."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from fakes3 import OPS, Call, FakeS3
from ocifs.s3 import S3
from ocifs.store import (
    Denied,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    Rejected,
    Unavailable,
)

from .expected import MIN_PART, md5_etag


def run(fn: Callable[[FakeS3], Awaitable[None]], clock: trio.abc.Clock | None = None) -> FakeS3:
    """Run ``fn(fake)`` on a fresh fake under trio (with ``clock``, e.g. a MockClock)."""
    fake = FakeS3()

    async def main() -> None:
        await fn(fake)

    trio.run(main, clock=clock)
    return fake


# --- the interface --------------------------------------------------------------------------
@pytest.mark.parametrize("impl", [FakeS3, S3])
def test_implements_every_protocol_method_with_its_signature(impl: type) -> None:
    """A method the Protocol gains, or a parameter renamed, shows up here before a caller
    finds out at run time that the fake (or the real client) lacks it."""
    methods = [n for n, v in vars(ObjectStore).items() if inspect.iscoroutinefunction(v)]
    assert len(methods) == 14
    for name in methods:
        want = inspect.signature(getattr(ObjectStore, name))
        got = inspect.signature(getattr(impl, name))
        assert inspect.iscoroutinefunction(getattr(impl, name)), name
        assert [(p.name, p.default) for p in got.parameters.values()] == [
            (p.name, p.default) for p in want.parameters.values()
        ], name


# --- AWS behaviour where MinIO differs ----------------------------------------------------------
HOSTILE = ["h/a//b", "h/x/./y", "h/x/../y", "h/" + "n" * 300, "h//lead", "h/both", "h/both/child"]


def test_keys_minio_refuses_are_stored_and_listed_as_aws_does() -> None:
    """MinIO refuses the first five (XMinioInvalidObjectName/ResourceName) and hides
    ``both/child`` beside ``both``; AWS keeps and lists every one. The filesystem must cope."""

    async def go(fake: FakeS3) -> None:
        for key in HOSTILE:
            await fake.put(key, key.encode(), {})
            assert await fake.get(key) == (md5_etag(key.encode()), key.encode())
        flat = await fake.list_page("h/", delimiter=None)
        assert [o.key for o in flat.objects] == sorted(HOSTILE, key=str.encode)
        top = await fake.list_page("h/")
        assert top.prefixes == ["h//", "h/a/", "h/both/", "h/x/"]
        assert [o.key for o in top.objects] == ["h/both", "h/" + "n" * 300]
        assert [o.key for o in (await fake.list_page("h/both/")).objects] == ["h/both/child"]
        assert (await fake.list_page("h/a/")).prefixes == ["h/a//"]

    run(go)


def test_keys_are_1_to_1024_utf8_bytes() -> None:
    async def go(fake: FakeS3) -> None:
        await fake.put("\u00e9" * 512, b"", {})  # 1024 bytes
        for key in ["", "\u00e9" * 512 + "x", "\ud800"]:
            with pytest.raises(Rejected):
                await fake.put(key, b"", {})
        assert fake.stats["errors.PutObject"] == 3  # counted as the real client counts them

    run(go)


def test_max_keys_1_under_a_prefix_that_is_a_key_goes_on() -> None:
    """Where MinIO stops early (test_listing.test_minio_max_keys_1_quirk)."""

    async def go(fake: FakeS3) -> None:
        for key in ["a", "a-b", "a0"]:
            await fake.put(key, b"", {})
        page = await fake.list_page("a", delimiter=None, max_keys=1)
        assert [o.key for o in page.objects] == ["a"] and page.next_token is not None
        page = await fake.list_page("a", page.next_token, delimiter=None, max_keys=1)
        assert [o.key for o in page.objects] == ["a-b"]

    run(go)


def test_list_multipart_matches_a_prefix() -> None:
    """Where MinIO answers only for an exact key (test_multipart.test_minio_lists_uploads_only_by_exact_key)."""

    async def go(fake: FakeS3) -> None:
        ids = [await fake.create_multipart(key, {}) for key in ["dir/b", "dir/a", "other"]]
        assert [(u.key, u.upload_id) for u in await fake.list_multipart("dir/")] == [
            ("dir/a", ids[1]),
            ("dir/b", ids[0]),
        ]

    run(go)


def test_a_part_named_twice_is_invalid_part_order() -> None:
    """AWS: InvalidPartOrder. MinIO accepts it and stores the part twice."""

    async def go(fake: FakeS3) -> None:
        upload_id = await fake.create_multipart("k", {})
        etag = await fake.upload_part("k", upload_id, 1, b"x" * MIN_PART)
        with pytest.raises(Rejected):
            await fake.complete_multipart("k", upload_id, [(1, etag), (1, etag)])

    run(go)


# --- the test-side API ------------------------------------------------------------------------
def test_times_come_from_the_injected_clock() -> None:
    now = [1_700_000_000.123456]
    fake = FakeS3(clock=lambda: now[0])

    async def go() -> None:
        await fake.put("k", b"x", {})
        assert (await fake.head("k")).mtime == 1_700_000_000.0
        assert (await fake.list_page("k")).objects[0].mtime == 1_700_000_000.123
        now[0] += 10
        upload_id = await fake.create_multipart("m", {})
        await fake.upload_part("m", upload_id, 1, b"x")
        assert [u.initiated for u in await fake.list_multipart("m")] == [1_700_000_010.123]
        assert [p.last_modified for p in await fake.list_parts("m", upload_id)] == [1_700_000_010.123]
        await fake.put("k", b"y", {"mtime": "5"})
        assert (await fake.head("k")).mtime == 5.0  # x-amz-meta-mtime wins over LastModified

    trio.run(go)


def test_seed_stores_without_a_request() -> None:
    fake = FakeS3()
    obj = fake.seed("k", b"abc", {"Mode": "420"})
    assert (obj.etag, obj.meta, fake.calls, fake.stats) == (md5_etag(b"abc"), {"mode": "420"}, [], {})

    async def go(fake: FakeS3) -> None:
        fake.seed("k", b"abc", {"mode": "420"})
        assert (await fake.head("k")).mode == 420

    run(go)


def test_calls_are_logged_in_order_with_their_part_numbers() -> None:
    async def go(fake: FakeS3) -> None:
        upload_id = await fake.create_multipart("dst", {})
        await fake.put("src", b"x" * 10, {})
        await fake.upload_part("dst", upload_id, 1, b"x")
        await fake.upload_part_copy("src", "dst", upload_id, 2, 0, 5)
        await fake.copy("src", "copy", {})
        await fake.list_page("pre")
        assert fake.calls == [
            Call("CreateMultipartUpload", "dst"),
            Call("PutObject", "src"),
            Call("UploadPart", "dst", 1),
            Call("UploadPartCopy", "dst", 2),
            Call("CopyObject", "copy"),
            Call("ListObjectsV2", "pre"),
        ]

    run(go)


def test_fail_raises_on_the_next_matching_calls_only() -> None:
    async def go(fake: FakeS3) -> None:
        fake.fail("PutObject", Denied, times=2, when=lambda call: call.key.startswith("x/"))
        await fake.put("y", b"", {})  # does not match
        for _ in range(2):
            with pytest.raises(Denied, match="injected"):
                await fake.put("x/1", b"", {})
        await fake.put("x/1", b"", {})  # used up
        assert "x/1" in fake.objects
        assert (fake.stats["requests.PutObject"], fake.stats["errors.PutObject"]) == (4, 2)

    run(go)


def test_fail_before_has_no_effect_and_fail_after_has_one() -> None:
    """``after=True`` is a lost reply: S3 acted, the caller saw an error."""

    async def go(fake: FakeS3) -> None:
        fake.fail("PutObject")
        with pytest.raises(Unavailable):
            await fake.put("before", b"", {})
        assert "before" not in fake.objects
        fake.fail("PutObject", after=True)
        with pytest.raises(Unavailable):
            await fake.put("after", b"", {})
        assert "after" in fake.objects
        with pytest.raises(PreconditionFailed):  # a retry of it then finds its own write
            await fake.put("after", b"", {}, if_none_match=True)

    run(go)


def test_fail_every_call_of_every_op_until_reset() -> None:
    async def go(fake: FakeS3) -> None:
        fake.fail("*", NotFound("gone"), times=None)
        for _ in range(3):
            with pytest.raises(NotFound, match="gone"):
                await fake.head("k")
            with pytest.raises(NotFound):
                await fake.list_page("")
        assert not [n for n in fake.stats if n.startswith("errors.")]  # NotFound is an answer
        fake.reset_faults()
        await fake.put("k", b"", {})

    run(go)


def test_fault_api_refuses_unknown_ops_and_foreign_errors() -> None:
    fake = FakeS3()
    with pytest.raises(ValueError, match="GetObjects"):
        fake.fail("GetObjects")
    with pytest.raises(TypeError):
        fake.fail("GetObject", OSError)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fake.freeze("Get")
    assert "HeadObject" in OPS and len(OPS) == 13


def test_delay_takes_trio_time_so_a_mock_clock_makes_it_instant() -> None:
    async def go(fake: FakeS3) -> None:
        fake.delay("GetObject", 30)
        fake.seed("k", b"x")
        start = trio.current_time()
        await fake.head("k")
        assert trio.current_time() == start
        await fake.get("k")
        assert trio.current_time() - start == 30
        with trio.move_on_after(10):
            await fake.get("k")
            pytest.fail("a 30 s GET finished within 10 s")
        fake.delay("GetObject", 0)
        await fake.get("k")
        assert trio.current_time() - start == 40

    run(go, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_frozen_call_waits_for_thaw_holding_its_limiter_slot() -> None:
    async def go(fake: FakeS3) -> None:
        fake.limiter = trio.CapacityLimiter(1)
        fake.freeze("PutObject")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.put, "k", b"v", {})
            await trio.testing.wait_all_tasks_blocked()
            assert fake.calls == [Call("PutObject", "k")] and "k" not in fake.objects
            with trio.move_on_after(5):  # the hung PUT holds the only slot
                await fake.head("k")
                pytest.fail("HEAD got a slot held by a frozen PUT")
            fake.thaw()
        assert fake.objects["k"].data == b"v"
        assert (await fake.head("k")).size == 1

    run(go, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancelled_frozen_call_has_no_effect() -> None:
    async def go(fake: FakeS3) -> None:
        fake.freeze()
        with trio.move_on_after(300):
            await fake.put("k", b"v", {})
        assert "k" not in fake.objects
        fake.thaw()
        await fake.put("k", b"v", {})
        assert "k" in fake.objects

    run(go, clock=trio.testing.MockClock(autojump_threshold=0))


def test_without_conditional_writes_the_last_writer_wins() -> None:
    """An S3-compatible store that ignores If-None-Match / If-Match (the case
    Publisher.probe_conditional_writes detects)."""
    fake = FakeS3(conditional_writes=False)

    async def go() -> None:
        await fake.put("k", b"1", {}, if_none_match=True)
        await fake.put("k", b"2", {}, if_none_match=True)
        await fake.put("k", b"3", {}, if_match=md5_etag(b"stale"))
        assert fake.objects["k"].data == b"3"

    trio.run(go)
