"""fsck's judgement of incomplete multipart uploads, and the progress line of gc and fsck."""

from __future__ import annotations

import io

import trio

from fakes3 import FakePart, FakeS3, FakeUpload
from ocifs.tools import Progress, _stale_uploads

NOW = 1_700_000_000.0


def upload(key: str, uid: str, initiated: float, *part_times: float) -> FakeUpload:
    parts = {n: FakePart(b"", f'"p{n}"', t) for n, t in enumerate(part_times, 1)}
    return FakeUpload(key, uid, {}, initiated, parts)


def uploads(*ups: FakeUpload) -> FakeS3:
    s3 = FakeS3()
    s3.uploads = {u.upload_id: u for u in ups}
    return s3


def test_an_upload_is_stale_only_when_its_last_part_is_older_than_the_grace():
    s3 = uploads(
        upload("p/app/blobs/sha256/aa", "live", NOW - 7200, NOW - 7000, NOW - 30),  # old, parts still arriving
        upload("p/app/blobs/sha256/bb", "stale", NOW - 7200, NOW - 7100),
        upload("p/app/ingest/x_1", "empty-old", NOW - 7200),
        upload("p/app/ingest/y_1", "empty-new", NOW - 10),
        upload("p/.ocifs/gc/marks/r.json", "ours", NOW - 7200),
        upload("other/app/blobs/sha256/cc", "not-under-the-prefix", NOW - 7200),
    )
    found = trio.run(_stale_uploads, s3, "p/", 3600.0, NOW)
    assert sorted(p.upload_id for p in found) == ["empty-old", "stale"]
    assert all(p.kind == "multipart" and p.repairable for p in found)


def test_uploads_are_listed_bucket_wide_and_filtered_here():
    # MinIO answers ListMultipartUploads only for a prefix that is an exact key (tests/fakes3.py).
    s3 = uploads(upload("p/app/x", "old", NOW - 7200))
    trio.run(_stale_uploads, s3, "p/", 3600.0, NOW)
    assert [c.key for c in s3.calls if c.op == "ListMultipartUploads"] == [""]


def test_an_upload_that_finishes_while_fsck_looks_is_no_problem():
    class Racing(FakeS3):
        async def list_parts(self, key, upload_id):
            self.uploads.pop(upload_id)  # completed between the two requests
            return await super().list_parts(key, upload_id)

    s3 = Racing()
    s3.uploads = {"done": upload("app/blobs/sha256/aa", "done", NOW - 7200, NOW - 7100)}
    assert trio.run(_stale_uploads, s3, "", 3600.0, NOW) == []


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_when_stderr_is_not_a_terminal():
    out = io.StringIO()
    p = Progress(out, interval=0)
    p.phase("gc: reading manifests")
    for _ in range(5):
        p.step(1 << 20)
    p.close()
    assert out.getvalue() == ""


def test_progress_rewrites_one_line_in_place_on_a_terminal_and_erases_it():
    out = FakeTty()
    p = Progress(out, interval=0)
    p.phase("fsck: blobs verified", 3)
    for _ in range(3):
        p.step(2 << 20)
    p.close()
    text = out.getvalue()
    assert "\n" not in text
    assert "\rfsck: blobs verified: 3/3 (6 MiB)\x1b[K" in text
    assert text.endswith("\r\x1b[K")
