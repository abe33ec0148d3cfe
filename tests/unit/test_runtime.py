"""ocifs.runtime without a mount: /proc/self/mounts parsing and private directories."""

from __future__ import annotations

import os
import stat

import pytest

from ocifs import errors, runtime

# --------------------------------------------------------------------------- /proc/self/mounts

SAMPLE = (
    b"proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    b"s3://b/p /mnt/\xc3\xbc\\040x fuse.ocifs rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0\n"
    b"s3://b /srv/tab\\011nl\\012back\\134slash fuse.ocifs rw 0 0\n"
    b"s3://b /srv/literal\\134040 fuse.ocifs rw 0 0\n"
    b"s3://b /srv/latin1-\xff fuse.ocifs rw 0 0\n"
    b"short line\n"
)


def test_non_ascii_and_escaped_mountpoints_are_decoded_like_the_path():
    points = [e.mountpoint for e in runtime.parse_mounts(SAMPLE)]
    assert points == [
        "/proc",
        "/mnt/ü x",
        "/srv/tab\tnl\nback\\slash",
        "/srv/literal\\040",  # an escaped backslash followed by the text "040"
        os.fsdecode(b"/srv/latin1-\xff"),  # not UTF-8: the str os and pathlib use for it
    ]


def test_mount_entry_fields_in_the_kernels_order():
    e = runtime.parse_mounts(SAMPLE)[1]
    assert (e.source, e.fstype) == ("s3://b/p", "fuse.ocifs")
    assert "user_id=0" in e.options.split(",")
    assert e[1] == e.mountpoint  # tuple access, as tests index entries


def test_mounted_paths_reads_this_process_mount_table():
    assert runtime.mounted_paths()["/proc"] == "proc"


# --------------------------------------------------------------------------- private dirs


def fake_stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, uid, 4096, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "problem"),
    [
        (stat.S_IFDIR | 0o700, 1000, None),
        (stat.S_IFDIR | 0o755, 1000, None),  # ours: the mode is tightened, not refused
        (stat.S_IFLNK | 0o777, 1000, "it is a symlink"),
        (stat.S_IFREG | 0o600, 1000, "it is not a directory"),
        (stat.S_IFDIR | 0o700, 1001, "it is owned by uid 1001, not 1000"),
    ],
)
def test_private_dir_problem(mode, uid, problem):
    assert runtime.private_dir_problem(fake_stat(mode, uid), 1000) == problem


def test_private_dir_is_created_0700(tmp_path):
    d = runtime.private_dir(tmp_path / "new", os.geteuid())
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_own_private_dir_with_a_loose_mode_is_tightened(tmp_path):
    d = tmp_path / "mine"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    runtime.private_dir(d, os.geteuid())
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_symlink_is_refused_and_its_target_left_alone(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.chmod(target, 0o777)
    link = tmp_path / "ocifs-1000"
    link.symlink_to(target)
    with pytest.raises(errors.OcifsError, match=r"refusing to use .*ocifs-1000: it is a symlink; remove it"):
        runtime.private_dir(link, os.geteuid())
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o777


def test_directory_of_another_user_is_refused_and_left_alone(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chmod(d, 0o777)
    owner = os.geteuid() + 4242
    with pytest.raises(errors.OcifsError, match=f"owned by uid {os.geteuid()}, not {owner}"):
        runtime.private_dir(d, owner)  # to ``owner`` the directory is someone else's
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o777


def test_a_file_in_the_way_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(errors.OcifsError, match="it is not a directory"):
        runtime.private_dir(f, os.geteuid())
