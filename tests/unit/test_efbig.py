"""A file ends at S3's largest object (5 TiB): writes past it are EFBIG, a write across it is
short (POSIX: only as many bytes as there is room for), and nothing is uploaded for either.
The EFBIG rows of tests/integration/test_errnos.py check the same through a real mount; the
short write is here because through a mount its close would publish a 5 TiB file."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from fsrig import Rig, run
from ocifs.files import MAX_FILE_SIZE


def test_a_write_across_the_largest_file_size_is_short_and_one_past_it_is_efbig(tmp_path):
    async def go(r: Rig):
        fh = await r.open("f", os.O_WRONLY | os.O_CREAT, pid=1)
        assert await r.write(fh, b"xy", MAX_FILE_SIZE - 1) == 1
        with pytest.raises(pyfuse3.FUSEError) as e:
            await r.write(fh, b"z", MAX_FILE_SIZE)
        assert e.value.errno == errno.EFBIG
        await r.unlink("f")  # never published: no 5 TiB upload
        await r.close(fh)
        assert r.s3.objects == {} and not [c for c in r.s3.calls if c.op == "UploadPart"]

    run(go, tmp_path)


def test_a_truncate_past_the_largest_file_size_is_efbig_and_uploads_nothing(tmp_path):
    async def go(r: Rig):
        await r.write_file("f", b"four")
        calls = len(r.s3.calls)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await r.truncate("f", MAX_FILE_SIZE + 1)
        assert e.value.errno == errno.EFBIG
        assert r.obj("f") == b"four" and len(r.s3.calls) == calls

    run(go, tmp_path)
