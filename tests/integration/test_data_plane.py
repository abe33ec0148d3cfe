"""The bulk data plane through a real mount over MinIO: which plane carries UploadPart and the
ranged GETs, and that the bytes are the same on both (the contract suite holds each plane to
the same answers request by request; this is the whole path: FUSE write, streaming multipart
upload, remount, cold read)."""

from __future__ import annotations

import hashlib

import pytest

MiB = 1024 * 1024


def body(n: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return (block * (n // len(block) + 1))[:n]


@pytest.mark.parametrize("plane", ["auto", "aiobotocore"])
def test_a_multipart_write_and_a_cold_read_are_exact_on_either_plane(bucket, mount_factory, monkeypatch, plane):
    monkeypatch.setenv("OCIFS_DATA_PLANE", plane)  # the daemon inherits the test's environment
    data = body(40 * MiB + 12345, 7)  # five 8 MiB parts and a tail: UploadPart, then ranged GETs
    m = mount_factory(bucket)
    (m.path / "big.bin").write_bytes(data)
    assert bucket.get("big.bin") == data
    m.remount()  # a cold read: nothing of it in memory
    with open(m.path / "big.bin", "rb") as f:
        assert f.read() == data
        f.seek(17 * MiB + 3)
        assert f.read(MiB) == data[17 * MiB + 3 : 18 * MiB + 3]
    native = "bulk transfers use the native data plane" in m.log
    assert native == (plane == "auto"), m.log_tail(20)

