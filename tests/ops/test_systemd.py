"""The systemd units in systemd/: they verify, and ocifs@.service's ExecStart really serves.

systemd is not PID 1 in the test environment, so the units are checked with
``systemd-analyze verify`` and the service is "started" the way systemd would start it: the
ExecStart= command line of ocifs@.service with %i substituted, the environment from its
EnvironmentFile=/Environment= lines, and a $NOTIFY_SOCKET this test binds itself.
The hardening directives (DevicePolicy=, CapabilityBoundingSet=, ...) are only verified.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import force_unmount, is_mounted, require_tool, run

from .opslib import (
    SYSTEM_PATH,
    SYSTEMD_DIR,
    NotifySocket,
    read_env_file,
    read_unit,
    require_installed,
    unit_value,
    unit_values,
    wait_unmounted,
)

pytestmark = pytest.mark.timeout(150)

UNITS = ["ocifs@.service", "srv-oci.mount", "srv-oci.automount", "zot.service"]
INSTANCE = "demo"


def systemd_analyze() -> str:
    return require_tool("systemd-analyze")


def verify(unit_dir: Path, *names: str):
    return run([systemd_analyze(), "verify", "--man=no", *[str(unit_dir / n) for n in names]], check=False, timeout=60)


def assert_clean_verify(res) -> None:
    assert res.returncode == 0, res.describe()
    # systemd-analyze warns (unknown keys, bad values) on stderr and still exits 0
    assert res.stderr.strip() == "", "systemd-analyze printed warnings\n" + res.describe()


def test_unit_files_exist():
    for name in UNITS + ["README.md", "etc/ocifs/example.toml", "etc/ocifs/example.env", "etc/ocifs/zot.toml", "etc/zot/config.json"]:
        assert (SYSTEMD_DIR / name).is_file(), f"systemd/{name} is missing"


def test_systemd_analyze_verify_ocifs_and_mount_units(tmp_path):
    require_installed("/usr/local/bin/ocifs")
    for n in ("ocifs@.service", "srv-oci.mount", "srv-oci.automount"):
        shutil.copy(SYSTEMD_DIR / n, tmp_path / n)
    assert_clean_verify(verify(tmp_path, f"ocifs@{INSTANCE}.service", "ocifs@zot.service"))
    assert_clean_verify(verify(tmp_path, "srv-oci.mount", "srv-oci.automount"))


def test_systemd_analyze_verify_zot_unit(tmp_path):
    """zot is not installable here: its binary is replaced by a stub, nothing else changes."""
    require_installed("/usr/local/bin/ocifs")
    shutil.copy(SYSTEMD_DIR / "ocifs@.service", tmp_path)
    stub = tmp_path / "zot"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (SYSTEMD_DIR / "zot.service").read_text()
    assert "/usr/local/bin/zot " in text
    (tmp_path / "zot.service").write_text(text.replace("/usr/local/bin/zot ", f"{stub} "))
    assert_clean_verify(verify(tmp_path, "zot.service"))

    unit = read_unit(SYSTEMD_DIR / "zot.service")
    for key in ("Requires", "After"):
        assert "ocifs@zot.service" in " ".join(unit_values(unit, "Unit", key)).split(), f"zot.service lacks {key}=ocifs@zot.service"
    # zot's bbolt databases (meta.db, and cache.db when dedupe is on) go in the default store's
    # rootDirectory: that must be local disk, and the store on the ocifs mount must not dedupe.
    zot_cfg = json.loads((SYSTEMD_DIR / "etc/zot/config.json").read_text())
    mount_dir = unit_mountpoint(SYSTEMD_DIR / "etc/ocifs/zot.toml")
    storage = zot_cfg["storage"]
    assert not Path(storage["rootDirectory"]).is_relative_to(mount_dir), "bbolt DBs would land on the ocifs mount"
    subs = storage.get("subPaths", {})
    on_mount = [s for s in subs.values() if Path(s["rootDirectory"]).is_relative_to(mount_dir)]
    assert on_mount, "no zot store lives on the ocifs mount"
    assert all(s.get("dedupe") is False for s in on_mount), "dedupe on the mount would put cache.db there"


def unit_mountpoint(toml_path: Path) -> Path:
    import tomllib

    return Path(tomllib.loads(toml_path.read_text())["mountpoint"])


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    """The verify check above is not vacuous: a typo and a missing binary are reported."""
    bad = (SYSTEMD_DIR / "ocifs@.service").read_text().replace("TimeoutStopSec=", "TimeoutStpoSec=")
    bad = bad.replace("/usr/local/bin/ocifs mount", "/usr/local/bin/no-such-ocifs mount")
    (tmp_path / "ocifs@.service").write_text(bad)
    res = verify(tmp_path, f"ocifs@{INSTANCE}.service")
    assert res.returncode != 0 and "TimeoutStpoSec" in res.stderr, res.describe()


def test_mount_unit_matches_what_the_kernel_shows():
    """systemd tracks a .mount by What=/Where=: ocifs reports fsname s3://BUCKET/PREFIX, type fuse.ocifs."""
    unit = read_unit(SYSTEMD_DIR / "srv-oci.mount")
    what, where = unit_value(unit, "Mount", "What"), unit_value(unit, "Mount", "Where")
    assert re.fullmatch(r"s3://[a-z0-9.\-]+(/[^/\s]+)*", what), what
    assert unit_value(unit, "Mount", "Type") == "fuse.ocifs"
    esc = run(["systemd-escape", "-p", "--suffix=mount", where]).stdout.strip()
    assert esc == "srv-oci.mount"
    auto = read_unit(SYSTEMD_DIR / "srv-oci.automount")
    assert unit_value(auto, "Automount", "Where") == where
    opts = unit_value(unit, "Mount", "Options").split(",")
    assert "_netdev" in opts and "allow_other" in opts and any(o.startswith("endpoint_url=") for o in opts)


# --------------------------------------------------------------------------- ExecStart for real


def service_command(instance: str, etc_dir: Path) -> tuple[list[str], dict[str, str], dict]:
    """ExecStart= argv and the environment systemd would give ocifs@INSTANCE.service."""
    unit = read_unit(SYSTEMD_DIR / "ocifs@.service")
    assert unit_value(unit, "Service", "Type") == "notify"
    assert unit_value(unit, "Service", "NotifyAccess") == "main"
    exec_start = unit_value(unit, "Service", "ExecStart")
    assert not exec_start.startswith(("-", "@", "+", "!", ":")), exec_start
    cmd = exec_start.replace("%i", instance).replace("%I", instance).replace("/etc/ocifs/", f"{etc_dir}/")
    argv = shlex.split(cmd)
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    for line in unit_values(unit, "Service", "Environment"):
        for item in shlex.split(line):
            k, _, v = item.partition("=")
            env[k] = v.replace("%i", instance)
    for ef in unit_values(unit, "Service", "EnvironmentFile"):
        optional = ef.startswith("-")
        path = Path(ef.lstrip("-").replace("%i", instance).replace("/etc/ocifs/", f"{etc_dir}/"))
        if path.exists():
            env.update(read_env_file(path))
        else:
            assert optional, f"EnvironmentFile={ef} is required but missing"
    return argv, env, unit


def instance_toml(example: Path, values: dict[str, str]) -> str:
    """systemd/etc/ocifs/example.toml with the site-specific values replaced."""
    text = example.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^#?\s*{key}\s*=\s*[^#\n]*", f'{key} = "{value}"  ', text)
        assert n == 1, f"{example} has no single {key} line"
    return text


@pytest.fixture
def service_dirs(tmp_path):
    etc = tmp_path / "etc-ocifs"
    etc.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield etc, mnt, tmp_path
    force_unmount(mnt)


def test_execstart_notify_ready_and_sigterm_unmounts_cleanly(s3, bucket, service_dirs):
    require_installed("/usr/local/bin/ocifs")
    require_tool("fusermount3")
    etc, mnt, tmp = service_dirs
    (etc / f"{INSTANCE}.toml").write_text(
        instance_toml(
            SYSTEMD_DIR / "etc/ocifs/example.toml",
            {"url": bucket.url, "mountpoint": str(mnt), "endpoint_url": s3.endpoint, "cache_dir": str(tmp / "cache")},
        )
    )
    # credentials come from the EnvironmentFile, not from this test's environment
    env_file = (SYSTEMD_DIR / "etc/ocifs/example.env").read_text()
    env_file = env_file.replace("AKIAEXAMPLE", s3.access_key).replace("change-me", s3.secret_key)
    (etc / f"{INSTANCE}.env").write_text(env_file)
    (etc / f"{INSTANCE}.env").chmod(0o600)

    argv, env, _ = service_command(INSTANCE, etc)
    assert argv[0] == "/usr/local/bin/ocifs" and "--foreground" in argv
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key
    notify = NotifySocket(tmp / "notify.sock")
    env["NOTIFY_SOCKET"] = str(notify.path)
    log = tmp / "service.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    fd = None
    try:
        bucket.put("existing.txt", b"from s3")
        notify.wait_for("READY=1", timeout=60, proc=proc)
        assert is_mounted(mnt), "READY=1 arrived but nothing is mounted\n" + log.read_text()[-3000:]
        assert os.listdir(mnt) == ["existing.txt"]  # the mount answers
        assert (mnt / "existing.txt").read_bytes() == b"from s3"

        # A file closed before the stop is in S3; one still open for writing when systemd
        # stops the service (SIGTERM) is not published: a file never closed never is.
        data = os.urandom(12 * 1024 * 1024 + 17)
        (mnt / "done.bin").write_bytes(data)
        fd = os.open(mnt / "pending.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(0, len(data), 1 << 20):
            os.write(fd, data[i : i + (1 << 20)])
        assert bucket.head("pending.bin") is None, "published before close?"
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon did not exit within 60 s of SIGTERM\n" + log.read_text()[-3000:])
        notify.drain()
        assert rc == 0, f"exit status {rc} would make Restart=on-failure restart it\n" + log.read_text()[-3000:]
        assert any("STOPPING=1" in m.splitlines() for m in notify.messages), notify.messages
        assert bucket.get("done.bin") == data
        assert bucket.head("pending.bin") is None, "a file never closed was published at SIGTERM"
        uploads = bucket.s3.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
        assert uploads == [], f"the stop left multipart uploads behind: {uploads}"
        assert "pending.bin: still open for writing at unmount: not published" in log.read_text()
        assert wait_unmounted(mnt, 10), f"{mnt} still mounted after the daemon exited"
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()


def test_execstart_failure_exits_nonzero_without_ready(s3, bucket, service_dirs):
    """Wrong credentials: no READY=1, one error line, non-zero exit (systemd marks it failed)."""
    require_installed("/usr/local/bin/ocifs")
    etc, mnt, tmp = service_dirs
    (etc / f"{INSTANCE}.toml").write_text(
        instance_toml(
            SYSTEMD_DIR / "etc/ocifs/example.toml",
            {"url": bucket.url, "mountpoint": str(mnt), "endpoint_url": s3.endpoint, "cache_dir": str(tmp / "cache")},
        )
    )
    (etc / f"{INSTANCE}.env").write_text(f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY=wrong-secret\n")
    argv, env, _ = service_command(INSTANCE, etc)
    notify = NotifySocket(tmp / "notify.sock")
    env["NOTIFY_SOCKET"] = str(notify.path)
    try:
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        notify.drain()
        assert res.returncode != 0
        assert not any("READY=1" in m for m in notify.messages), notify.messages
        assert not is_mounted(mnt)
        assert "Traceback" not in res.stderr, res.stderr
        errors = [l for l in res.stderr.splitlines() if l.startswith("ocifs:")]
        assert len(errors) == 1, res.stderr
    finally:
        notify.close()
