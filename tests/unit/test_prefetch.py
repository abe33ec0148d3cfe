from ocifs.config import MiB
from ocifs.prefetch import ReadAhead


def test_sequential_reads_grow_the_window_up_to_the_ceiling():
    ra = ReadAhead(chunk_size=8 * MiB, initial=8 * MiB, maximum=64 * MiB)
    windows = []
    off = 0
    for _ in range(6):
        ra.on_read(off, MiB, 10_000 * MiB)
        windows.append(ra.window)
        off += MiB
    assert windows == [8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB, 64 * MiB, 64 * MiB]


def test_first_read_at_zero_prefetches_the_next_chunks():
    ra = ReadAhead(chunk_size=8 * MiB, initial=16 * MiB, maximum=64 * MiB)
    assert list(ra.on_read(0, MiB, 1000 * MiB)) == [0, 1, 2]


def test_random_reads_prefetch_nothing():
    ra = ReadAhead(chunk_size=8 * MiB, initial=8 * MiB, maximum=64 * MiB)
    assert list(ra.on_read(500 * MiB, 4096, 1000 * MiB)) == []
    assert list(ra.on_read(100 * MiB, 4096, 1000 * MiB)) == []
    assert ra.window == 0


def test_window_stops_at_end_of_object():
    ra = ReadAhead(chunk_size=8 * MiB, initial=64 * MiB, maximum=64 * MiB)
    assert list(ra.on_read(0, MiB, 10 * MiB)) == [0, 1]


def test_a_jump_resets_the_window():
    ra = ReadAhead(chunk_size=8 * MiB, initial=8 * MiB, maximum=64 * MiB)
    for i in range(4):
        ra.on_read(i * MiB, MiB, 1000 * MiB)
    assert ra.window > 8 * MiB
    ra.on_read(700 * MiB, MiB, 1000 * MiB)
    assert ra.window == 0
