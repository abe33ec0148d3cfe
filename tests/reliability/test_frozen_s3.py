"""S3 freezes (SIGSTOP) in the middle of a cold read: the read fails cleanly, the mount lives.

The fleet-safety issue's reproduction: MinIO frozen 0.3 s into a cold `cat` of a big file used
to end the FUSE loop ("Transport endpoint is not connected") once the read-ahead timed out.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from testkit import is_mounted
from testkit.fsops import MiB, bounded, content, read_file

from .conftest import MARGIN, OP_TIMEOUT
from .test_faults import check_mount_works, must_not_hang


def test_s3_frozen_during_a_cold_read_gives_eio_and_the_mount_survives(private_minio, private_bucket, fault_mount_factory):
    data = content("frozen", 128 * MiB)
    private_bucket.put("big.bin", data)
    m = fault_mount_factory(private_bucket, endpoint=private_minio.endpoint)
    try:
        started = time.monotonic()
        box: dict = {}

        def cat() -> None:
            try:
                box["value"] = read_file(m.path / "big.bin")
            except OSError as exc:
                box["errno"] = exc.errno

        t = threading.Thread(target=cat, daemon=True)
        t.start()
        time.sleep(0.3)
        private_minio.pause()  # SIGSTOP: S3 stops answering, mid-read
        t.join(timeout=OP_TIMEOUT * 3 + MARGIN)
        assert not t.is_alive(), "the read hung past its deadlines"
        elapsed = time.monotonic() - started
        assert box.get("errno") == errno.EIO or box.get("value") == data, box.keys()
        assert elapsed < OP_TIMEOUT * 3 + MARGIN
    finally:
        private_minio.resume()
    assert is_mounted(m.path), f"the mount died\n{m.log_tail(40)}"
    assert os.stat(m.path / "big.bin").st_size == len(data)  # (no listdir: a fresh listing answers the next lookup)
    o = must_not_hang(bounded(read_file, OP_TIMEOUT + MARGIN, m.path / "big.bin"), "read after S3 answers again", m)
    assert o.status == "ok" and o.value == data
    check_mount_works(m, private_bucket, "frozen")
    assert "Traceback" not in m.log
