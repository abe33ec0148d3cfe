"""Live counters: ``ocifs stats MNT``, ``--metrics-addr`` (Prometheus over HTTP), ``stats --watch``."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import free_port, ocifs_bin, run

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'(ocifs_[a-z0-9_]+(?:\{[a-z]+="[A-Za-z0-9]+"\})?) (-?[0-9.e+]+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def stats(m) -> dict[str, float]:
    return parse(run([*ocifs_bin(), "stats", m.path], timeout=30).stdout)


def get(d, name):
    return d.get(name, 0.0)


REQ = 'ocifs_s3_requests_total{op="%s"}'
BYTES_IN = 'ocifs_s3_bytes_total{direction="in"}'
BYTES_OUT = 'ocifs_s3_bytes_total{direction="out"}'


def test_counters_move_when_data_moves(bucket, mount_factory):
    port = free_port()
    m = mount_factory(bucket, extra_args=["--part-size", "5", "--metrics-addr", f"127.0.0.1:{port}"])
    small = os.urandom(300_000)
    big = os.urandom(6 * MiB + 123)
    external = os.urandom(2 * MiB + 5)
    bucket.put("external.bin", external)

    s0 = stats(m)
    for name in ("ocifs_cache_hits_total", "ocifs_cache_misses_total", "ocifs_cache_bytes", "ocifs_open_files", "ocifs_inodes", "ocifs_uploads_active"):
        assert name in s0, f"{name} missing from `ocifs stats`"

    (m.path / "small.bin").write_bytes(small)  # one PutObject
    (m.path / "big.bin").write_bytes(big)  # multipart: 5 MiB parts
    s1 = stats(m)
    assert get(s1, REQ % "PutObject") > get(s0, REQ % "PutObject")
    assert get(s1, REQ % "UploadPart") >= get(s0, REQ % "UploadPart") + 2
    assert get(s1, REQ % "CompleteMultipartUpload") > get(s0, REQ % "CompleteMultipartUpload")
    assert get(s1, BYTES_OUT) - get(s0, BYTES_OUT) >= len(small) + len(big)
    assert get(s1, "ocifs_fuse_writes_total") > get(s0, "ocifs_fuse_writes_total")
    assert bucket.get("big.bin") == big

    assert (m.path / "external.bin").read_bytes() == external  # not cached yet: GETs, misses
    s2 = stats(m)
    assert get(s2, REQ % "GetObject") > get(s1, REQ % "GetObject")
    assert get(s2, BYTES_IN) - get(s1, BYTES_IN) >= len(external)
    assert get(s2, "ocifs_cache_misses_total") > get(s1, "ocifs_cache_misses_total")
    assert get(s2, "ocifs_cache_bytes") >= len(external)
    assert get(s2, "ocifs_fuse_reads_total") > get(s1, "ocifs_fuse_reads_total")

    assert (m.path / "external.bin").read_bytes() == external  # cached: hits, no new GET
    s3_ = stats(m)
    assert get(s3_, "ocifs_cache_hits_total") > get(s2, "ocifs_cache_hits_total")
    assert get(s3_, REQ % "GetObject") == get(s2, REQ % "GetObject")
    assert get(s3_, BYTES_IN) == get(s2, BYTES_IN)

    # the same text over HTTP
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        http = parse(r.read().decode())
    s4 = stats(m)
    assert set(http) == set(s4)
    for name in (REQ % "GetObject", REQ % "UploadPart", BYTES_IN, BYTES_OUT, "ocifs_cache_hits_total", "ocifs_cache_misses_total"):
        assert get(s3_, name) <= http[name] <= get(s4, name), name


def test_stats_on_something_not_mounted_is_one_line(tmp_path):
    res = run([*ocifs_bin(), "stats", tmp_path], timeout=30, check=False)
    assert res.returncode == 1 and res.stdout == "", res.describe()
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "no ocifs mount answers" in lines[0], res.describe()


def test_stats_watch_prints_updating_blocks(bucket, mount):
    proc = subprocess.Popen(
        [*ocifs_bin(), "stats", str(mount.path), "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    blocks: list[dict[str, str]] = []
    lines: list[str] = []

    def reader():
        cur = None
        for line in proc.stdout:
            lines.append(line)
            if re.fullmatch(r"\d\d:\d\d:\d\d\n", line):
                cur = {}
                blocks.append(cur)
            elif cur is not None and line.startswith("  "):
                name, _, rest = line.strip().partition(" ")
                cur[name] = rest

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 15
        while len(blocks) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(blocks) >= 2, f"no blocks from --watch: {''.join(lines)[-2000:]}\n{proc.stderr.read() if proc.poll() is not None else ''}"
        seen = len(blocks)
        (mount.path / "watched.bin").write_bytes(os.urandom(MiB))
        # a later block shows the bytes going out, with a rate
        found = None
        while found is None and time.monotonic() < deadline:
            for b in blocks[seen:-1]:  # complete blocks only
                v = b.get(BYTES_OUT, "")
                if v and float(v.split()[0].replace(",", "")) >= MiB:
                    found = v
            time.sleep(0.05)
        assert found is not None, "no --watch block showed the write\n" + "".join(lines)[-3000:]
        assert len(blocks) >= 3
        rated = [b[BYTES_OUT] for b in blocks[seen:] if "/s)" in b.get(BYTES_OUT, "")]
        assert rated, "no rate shown for a counter that moved\n" + "".join(lines)[-3000:]
        assert proc.poll() is None, "--watch exited on its own"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_flood_of_idle_metrics_connections_is_bounded(bucket, mount_factory):
    """Each of 200 idle connections would be a task and a descriptor for 5 s: at most 16 are."""
    import socket

    port = free_port()
    m = mount_factory(bucket, extra_args=["--metrics-addr", f"127.0.0.1:{port}"])
    pid = m.pid
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        time.sleep(0.5)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        assert fds < 120, f"the daemon holds {fds} descriptors with 200 idle metrics connections"
        # a scraper still gets an answer once the idle ones time out (5 s)
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the metrics endpoint never answered again"
                time.sleep(0.5)
        assert "ocifs_s3_requests_total" in body
    finally:
        for s in socks:
            s.close()

