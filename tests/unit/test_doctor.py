"""The pure parts of ``ocifs doctor``: fuse.conf, clock skew, FUSE_INIT parsing, the table."""

from __future__ import annotations

import io
import struct

import pytest

from ocifs import doctor, fuseprobe


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        ("user_allow_other\n", True),
        ("# mount_max = 1000\n  user_allow_other   # for ocifs\n", True),
        ("#user_allow_other\n", False),
        ("user_allow_other_not\n", False),
        ("", False),
    ],
)
def test_user_allow_other(text, enabled):
    assert doctor.user_allow_other(text) is enabled


def test_allow_other_for_a_user_names_the_fix(tmp_path):
    conf = tmp_path / "fuse.conf"
    conf.write_text("#user_allow_other\n")
    r = doctor.check_allow_other(["allow_other"], 1000, conf)
    assert r.status == doctor.FAIL and r.fix == f"echo user_allow_other >> {conf}"
    conf.write_text("user_allow_other\n")
    assert doctor.check_allow_other(["allow_other"], 1000, conf).status == doctor.OK
    assert doctor.check_allow_other(["allow_other"], 0, tmp_path / "missing").status == doctor.OK
    assert doctor.check_allow_other(["ro"], 1000, conf).status == doctor.SKIP


def test_missing_dev_fuse_names_the_container_flags(tmp_path):
    r = doctor.check_dev_fuse(str(tmp_path / "fuse"))
    assert r.status == doctor.FAIL and "--device /dev/fuse --cap-add SYS_ADMIN" in r.fix


@pytest.mark.parametrize(
    ("offset", "status"),
    [(0.0, doctor.OK), (-45.0, doctor.WARN), (3600.0, doctor.FAIL)],
)
def test_clock_skew(offset, status):
    date = "Tue, 01 Dec 2026 12:00:00 GMT"
    remote = 1796126400.0  # that date
    r = doctor.clock_result(date, remote + offset)
    assert r.status == status, r
    assert doctor.clock_result(None, remote).status == doctor.WARN
    assert doctor.clock_result("yesterday", remote).status == doctor.WARN


def init_request(minor: int, flags: int, flags2: int) -> bytes:
    header = struct.pack("<IIQQIIIHH", 104, fuseprobe.FUSE_INIT, 2, 0, 0, 0, 0, 0, 0)
    return header + struct.pack("<IIIII", 7, minor, 131072, flags, flags2) + bytes(44)


def test_parse_init_reads_protocol_and_feature_bits():
    k = fuseprobe.parse_init(init_request(45, (1 << 22) | (1 << 30), 1 << 5))
    assert k.protocol == "7.45" and k.features == ["max_pages", "passthrough"]


def test_parse_init_ignores_flags2_before_7_36():
    k = fuseprobe.parse_init(init_request(31, 1 << 18, 0xFFFF))
    assert k.features == ["parallel_dirops"]


def test_parse_init_refuses_other_requests():
    with pytest.raises(fuseprobe.ProbeError, match="not FUSE_INIT"):
        fuseprobe.parse_init(struct.pack("<IIQQIIIHH", 64, 1, 2, 1, 0, 0, 0, 0, 0) + bytes(24))


def test_table_shows_fixes_for_failures_and_warnings_only():
    out = io.StringIO()
    doctor.render(
        [
            doctor.Result("put", doctor.FAIL, "denied", "allow s3:PutObject"),
            doctor.Result("clock", doctor.WARN, "45 s", "sync"),
            doctor.Result("list", doctor.OK, "fine", "never shown"),
        ],
        out,
    )
    assert out.getvalue() == (
        "CHECK  RESULT  DETAIL\n"
        "put    FAIL    denied\n"
        "               fix: allow s3:PutObject\n"
        "clock  warn    45 s\n"
        "               fix: sync\n"
        "list   ok      fine\n"
        "\n3 checks: 1 failed, 1 warnings\n"
    )
