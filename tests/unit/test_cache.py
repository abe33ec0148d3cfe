import trio

from ocifs.cache import ChunkCache


def test_concurrent_misses_share_one_fetch():
    calls = []

    async def fetch(start, end):
        calls.append((start, end))
        await trio.sleep(0.01)
        return b"x" * (end - start)

    async def main():
        cache = ChunkCache(max_bytes=100, chunk_size=10)
        got = []

        async def reader():
            got.append(await cache.get(("k", "e", 1), 25, fetch))

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(reader)
        return got

    got = trio.run(main)
    assert calls == [(10, 20)]
    assert all(g == b"x" * 10 for g in got)


def test_cache_is_bounded_in_bytes():
    async def fetch(start, end):
        return b"y" * (end - start)

    async def main():
        cache = ChunkCache(max_bytes=30, chunk_size=10)
        for i in range(10):
            await cache.get(("k", "e", i), 1000, fetch)
        return cache.current_bytes

    assert trio.run(main) <= 30


def test_a_new_version_never_hits_old_chunks():
    async def main():
        cache = ChunkCache(max_bytes=100, chunk_size=10)

        async def old(start, end):
            return b"o" * (end - start)

        async def new(start, end):
            return b"n" * (end - start)

        a = await cache.get(("k", "etag1", 0), 10, old)
        b = await cache.get(("k", "etag2", 0), 10, new)
        return a, b

    assert trio.run(main) == (b"o" * 10, b"n" * 10)
