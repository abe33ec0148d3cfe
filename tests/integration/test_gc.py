"""``ocifs gc`` and ``fsck`` with writers in flight: real MinIO, real mounts, the real oras CLI.

The gc protocol itself (marks, keeps, the sweep's handshake) is tested step by step in
tests/unit/test_gc_protocol.py; here it runs for real: the ``ocifs`` CLI on a loop while two
mounts of one bucket push, reuse, untag and retag, and every tag left must pull whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Bucket, Mount, ocifs_bin, oras, run
from ocifs import tools
from ocifs.config import Config
from ocifs.gc import Collector

MiB = 1024 * 1024
GRACE = 4  # seconds: a few sweeps per test, and far longer than a push here (~0.3 s)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ocifs_tool(bucket: Bucket, *args: str, check: bool = True, timeout: float = 300):
    return run([*ocifs_bin(), *args, bucket.url, "--endpoint-url", bucket.s3.endpoint], env=bucket.s3.env(), check=check, timeout=timeout)


def push(m: Mount, ref: str, files: dict[str, bytes], workdir: Path) -> str:
    """oras push ``files`` (name -> bytes) as ``ref`` through mount ``m``; its digest."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (workdir / name).write_bytes(data)
    res = oras("push", "--oci-layout", f"{m.path}/{ref}", *files, cwd=workdir)
    return next(line.split()[-1] for line in res.stdout.splitlines() if line.startswith("Digest:"))


def index_entries(bucket: Bucket, repo: str = "app") -> list[dict]:
    return json.loads(bucket.get(f"{repo}/index.json"))["manifests"]


def tags(bucket: Bucket, repo: str = "app") -> dict[str, str]:
    return {
        d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"]
        for d in index_entries(bucket, repo)
        if "org.opencontainers.image.ref.name" in (d.get("annotations") or {})
    }


UNTAG = """
import json, sys
path, gone = sys.argv[1], set(sys.argv[2:])
with open(path, "rb") as f:
    index = json.load(f)
index["manifests"] = [d for d in index["manifests"] if d["digest"] not in gone]
with open(path, "w") as f:
    json.dump(index, f)
"""


def untag(m: Mount, digests: set[str], repo: str = "app") -> None:
    """Drop descriptors from index.json through the mount, as a tool that untags would (oras'
    own `manifest delete` also deletes the blobs, which leaves gc nothing to decide).

    In a child process: this test forks oras and ocifs from other threads, and a forked child
    closing an inherited descriptor of a file being rewritten makes the mount publish it
    half-written (FUSE flush). Every write to a mount here comes from a child process."""
    run([sys.executable, "-c", UNTAG, str(m.path / repo / "index.json"), *sorted(digests)])


def retag(m: Mount, digest: str, tag: str, workdir: Path, repo: str = "app"):
    """Tag a manifest that is no longer in index.json, as a CI runner re-tagging an old image
    would with oras: fetch it by digest, push it back under the tag.

    Not `oras tag <repo>@<digest>`: for a digest that index.json does not list, oras-go's
    layout store resolves it as a plain blob and tags it as ``application/octet-stream``, so
    the tag then pulls nothing (the same on a local directory, not an ocifs matter)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fetched = oras("manifest", "fetch", "--oci-layout", f"{m.path}/{repo}@{digest}", "--output", "manifest.json",
                   cwd=workdir, check=False)
    if fetched.returncode != 0:
        return fetched
    return oras("manifest", "push", "--oci-layout", f"{m.path}/{repo}:{tag}", "manifest.json", cwd=workdir, check=False)


def pull_and_check(m: Mount, ref: str, want: dict[str, bytes], out: Path) -> None:
    """oras pull ``ref`` (oras checks every digest it reads) and compare the files."""
    out.mkdir(parents=True)
    pulled = oras("pull", "--oci-layout", f"{m.path}/{ref}", cwd=out)
    for name, data in want.items():
        if not (out / name).exists():
            manifest = oras("manifest", "fetch", "--oci-layout", f"{m.path}/{ref}").stdout
            pytest.fail(f"{ref}: no {name} after pull; pulled {sorted(os.listdir(out))}; manifest {manifest}\n"
                        f"oras pull said:\n{pulled.stdout}\n{pulled.stderr}\n{m.log_tail(30)}")
        got = (out / name).read_bytes()
        assert got == data, f"{ref}: {name} has {len(got)} bytes that differ from what was pushed"


# --- the loop -------------------------------------------------------------------------------
class Pusher(threading.Thread):
    """One CI runner on one mount: pushes images sharing layers from a small pool (oras then
    skips the blobs that exist, so condemned ones get reused), untags its older images, and
    re-tags an untagged one now and then."""

    def __init__(self, name: str, m: Mount, pool: list[bytes], workdir: Path, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.m, self.pool, self.workdir, self.stop = m, pool, workdir, stop
        self.rng = random.Random(name)
        self.images: dict[str, tuple[str, dict[str, bytes]]] = {}  # tag -> (digest, files)
        self.untagged: list[tuple[str, dict[str, bytes]]] = []
        self.counts = {"pushes": 0, "untags": 0, "retags": 0, "retags_refused": 0}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                self.step(i)
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def step(self, i: int) -> None:
        name = self.name
        if i % 4 == 0 and self.untagged:
            digest, files = self.untagged.pop(self.rng.randrange(len(self.untagged)))
            tag = f"{name}-re{i}"
            res = retag(self.m, digest, tag, self.workdir / f"re{i}")
            if res.returncode == 0:
                self.images[tag] = (digest, files)
                self.counts["retags"] += 1
            else:  # swept before the tag: refusing is right, tagging a broken image is not
                assert "not found" in (res.stderr + res.stdout).lower(), res.describe()
                self.counts["retags_refused"] += 1
            return
        files = {f"pool{k}.bin": self.pool[k] for k in self.rng.sample(range(len(self.pool)), 2)}
        files[f"own-{name}-{i}.txt"] = f"{name} image {i}".encode()
        tag = f"{name}-{i}"
        digest = push(self.m, f"app:{tag}", files, self.workdir / str(i))
        self.images[tag] = (digest, files)
        self.counts["pushes"] += 1
        if len(self.images) > 2:  # keep the two newest: the rest become unreachable
            old = sorted(self.images, key=lambda t: int(re.sub(r"\D", "", t.split("-")[-1])))[:-2]
            gone = {self.images[t][0] for t in old}
            # untag by digest only if no tag we keep shares it
            gone -= {d for t, (d, _) in self.images.items() if t not in old}
            untag(self.m, gone)
            for t in old:
                d, f = self.images.pop(t)
                if d in gone:
                    self.untagged.append((d, f))
            self.counts["untags"] += 1


class GcLoop(threading.Thread):
    """gc every half second for at least a minute, and on (within a bound) until it has run
    10 times and swept 3 marks: a slow, shared machine still gets the whole exercise."""

    def __init__(self, bucket: Bucket, stop: threading.Event) -> None:
        super().__init__(name="gc", daemon=True)
        self.bucket, self.stop = bucket, stop
        self.outputs: list[str] = []
        self.error: BaseException | None = None

    def swept(self) -> int:
        return sum(int(m) for out in self.outputs for m in re.findall(r"gc: swept (\d+) mark", out))

    def run(self) -> None:
        start = time.monotonic()
        try:
            while time.monotonic() - start < 60 or (
                (len(self.outputs) < 10 or self.swept() < 3) and time.monotonic() - start < 240
            ):
                self.outputs.append(ocifs_tool(self.bucket, "gc", "--grace", str(GRACE)).stdout)
                time.sleep(0.5)
        except BaseException as exc:
            self.error = exc
        finally:
            self.stop.set()

    def count(self, pattern: str) -> int:
        return sum(len(re.findall(pattern, out, re.M)) for out in self.outputs)


def test_gc_in_a_loop_with_two_mounts_pushing_leaves_every_tag_whole(bucket, mount_factory, tmp_path):
    a, b = mount_factory(bucket), mount_factory(bucket)
    pool = [os.urandom(64 * 1024) for _ in range(5)]
    push(a, "app:seed", {"seed.txt": b"seed"}, tmp_path / "seed")  # the layout exists first
    stop = threading.Event()
    pushers = [Pusher("a", a, pool, tmp_path / "a", stop), Pusher("b", b, pool, tmp_path / "b", stop)]
    loop = GcLoop(bucket, stop)
    for t in [*pushers, loop]:
        t.start()
    for t in [*pushers, loop]:
        t.join(timeout=600)
        assert not t.is_alive(), f"{t.name} still running"
    for t in [*pushers, loop]:
        if t.error is not None:
            raise t.error
    for p in pushers:  # a re-tag after the last sweep (if one is left to make) is checked below
        p.step(4 * 10**6)

    summary = {
        **{f"{p.name}.{k}": v for p in pushers for k, v in p.counts.items()},
        "gc runs": len(loop.outputs),
        "condemned": loop.count(r"^condemned "),
        "deleted": loop.count(r"^deleted "),
        "kept by a mount": loop.count(r"^spared .*: kept by a mount$"),
        "reachable again": loop.count(r"^spared .*: reachable again$"),
        "marks swept": loop.swept(),
    }
    print("gc loop:", json.dumps(summary))
    # The run did what it is meant to exercise: sweeps that deleted, and blobs a client reused
    # after they were condemned.
    assert summary["gc runs"] >= 10 and summary["marks swept"] >= 3, summary
    assert summary["deleted"] > 0 and summary["kept by a mount"] + summary["reachable again"] > 0, summary
    assert sum(p.counts["retags"] for p in pushers) > 0, summary

    # Nothing dangles, and every tag each runner kept is there and pulls with its content.
    res = ocifs_tool(bucket, "fsck", "--grace", "3600", check=False)
    assert "dangling" not in res.stdout and res.returncode == 0, res.describe()
    now_tagged = tags(bucket)
    checker = mount_factory(bucket)
    for p in pushers:
        for tag, (digest, files) in p.images.items():
            assert now_tagged.get(tag) == digest, f"tag {tag} lost or moved"
            pull_and_check(checker, f"app:{tag}", files, tmp_path / "pull" / tag)
    final = ocifs_tool(bucket, "gc", "--grace", "0").stdout  # nothing writes now
    assert "dangling" not in ocifs_tool(bucket, "fsck", "--grace", "3600").stdout, final


# --- single steps ---------------------------------------------------------------------------
def test_a_blob_checked_on_a_mount_after_gc_condemned_it_survives_the_sweep(bucket, mount, tmp_path):
    layer = os.urandom(100_000)
    push(mount, "app:v1", {"v1.txt": b"v1"}, tmp_path / "v1")
    old = push(mount, "app:old", {"layer.bin": layer}, tmp_path / "old")
    untag(mount, {old})
    out = ocifs_tool(bucket, "gc", "--grace", str(GRACE)).stdout
    run_id = re.search(r"in mark (\S+) ", out).group(1)
    assert f"condemned {bucket.key('app/blobs/sha256/' + sha(layer))}" in out
    time.sleep(1.5)  # past the mount's --metadata-ttl: its next lookup reads the marks
    # A CI runner pushes an image reusing the layer: oras stats it, finds it, skips it.
    new = push(mount, "app:new", {"layer.bin": layer}, tmp_path / "new")
    keeps = bucket.list(f".ocifs/gc/keep/{run_id}/")
    assert len(keeps) >= 1, f"no keep written for run {run_id}"
    time.sleep(GRACE)
    out = ocifs_tool(bucket, "gc", "--grace", str(GRACE)).stdout
    assert re.search(rf"^spared .*{sha(layer)}: (kept by a mount|reachable again)$", out, re.M), out
    assert bucket.head(f"app/blobs/sha256/{sha(layer)}") is not None
    pull_and_check(mount, f"app@{new}", {"layer.bin": layer}, tmp_path / "pull")
    assert "fsck: 0 problem(s)" in ocifs_tool(bucket, "fsck", "--grace", "3600").stdout


def test_after_a_sweep_a_mount_that_knew_a_blob_asks_again_and_the_push_uploads_it(bucket, mount, tmp_path):
    layer = os.urandom(100_000)
    push(mount, "app:v1", {"v1.txt": b"v1"}, tmp_path / "v1")
    old = push(mount, "app:old", {"layer.bin": layer}, tmp_path / "old")  # the mount knows the layer
    untag(mount, {old})
    out = ocifs_tool(bucket, "gc", "--grace", "0").stdout  # no writers right now
    assert f"deleted {bucket.key('app/blobs/sha256/' + sha(layer))}" in out
    time.sleep(1.5)  # the kernel's and the mount's caches of the blob expire / see the sweep
    new = push(mount, "app:again", {"layer.bin": layer}, tmp_path / "again")
    assert bucket.head(f"app/blobs/sha256/{sha(layer)}") is not None, "oras skipped a blob gc deleted"
    pull_and_check(mount, f"app@{new}", {"layer.bin": layer}, tmp_path / "pull")


def test_a_manifest_written_after_gc_lists_and_tagged_before_it_reads_index_json_is_kept(bucket, mount, tmp_path):
    """The interleaving is forced in-process: the real gc code on a real S3 client, paused
    right after its LIST of the blobs while a real oras push through the mount tags a
    manifest that reuses an unreachable layer."""
    layer = os.urandom(100_000)
    push(mount, "app:v1", {"v1.txt": b"v1"}, tmp_path / "v1")
    old = push(mount, "app:old", {"layer.bin": layer}, tmp_path / "old")
    untag(mount, {old})
    pushed: dict[str, str] = {}

    class PauseAfterList:
        def __init__(self, s3):
            self._s3 = s3

        def __getattr__(self, name):
            return getattr(self._s3, name)

        async def list_page(self, prefix, token=None, delimiter="/", max_keys=1000):
            page = await self._s3.list_page(prefix, token, delimiter, max_keys)
            if prefix == bucket.prefix and page.next_token is None and not pushed:
                import trio

                def late_push():
                    pushed["digest"] = push(mount, "app:late", {"layer.bin": layer}, tmp_path / "late")

                await trio.to_thread.run_sync(late_push)
            return page

    env = bucket.s3.env()
    cfg = Config(bucket=bucket.name, prefix=bucket.prefix, endpoint_url=bucket.s3.endpoint, region="us-east-1")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=env["AWS_ACCESS_KEY_ID"], AWS_SECRET_ACCESS_KEY=env["AWS_SECRET_ACCESS_KEY"])
    try:
        report = tools._run(cfg, lambda s3: Collector(PauseAfterList(s3), cfg.prefix, 0, False).run())
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert pushed.get("digest"), "the late push did not run"
    layer_key = bucket.key(f"app/blobs/sha256/{sha(layer)}")
    assert layer_key not in {o.key for o in report.condemned} | {o.key for o in report.deleted}
    assert bucket.head(f"app/blobs/sha256/{sha(layer)}") is not None
    pull_and_check(mount, "app:late", {"layer.bin": layer}, tmp_path / "pull")
    assert "fsck: 0 problem(s)" in ocifs_tool(bucket, "fsck", "--grace", "3600").stdout


def test_gc_bookkeeping_is_hidden_from_mounts_and_ls(bucket, mount, tmp_path):
    push(mount, "app:v1", {"v1.txt": b"v1"}, tmp_path / "v1")
    bucket.put(f"app/blobs/sha256/{sha(b'stray')}", b"stray")
    ocifs_tool(bucket, "gc", "--grace", "3600")
    assert bucket.list(".ocifs/gc/marks/"), "gc wrote no mark"
    time.sleep(1.5)
    assert os.listdir(mount.path) == ["app"]
    assert not (mount.path / ".ocifs").exists()
    repos = json.loads(ocifs_tool(bucket, "ls", "--json").stdout)
    assert [r["repo"] for r in repos] == ["app"]
    assert "fsck: 0 problem(s)" in ocifs_tool(bucket, "fsck", "--grace", "3600").stdout


# --- fsck and multipart uploads -------------------------------------------------------------
def uploads(bucket: Bucket) -> dict[str, str]:
    r = bucket.s3.client.list_multipart_uploads(Bucket=bucket.name, Prefix=bucket.prefix)
    return {u["UploadId"]: u["Key"] for u in r.get("Uploads", [])}


# A slow writer in its own process: the test spawns `ocifs fsck`, and a forked child closing an
# inherited descriptor of the file would make the mount publish it (FUSE flush).
SLOW_WRITER = """
import sys
part = bytes(range(256)) * (5 * 1024 * 1024 // 256)
with open(sys.argv[1], "wb") as f:
    for chunk in (part + b"x", part, b"end"):
        f.write(chunk)
        f.flush()
        print("wrote", flush=True)
        sys.stdin.readline()
"""
PART = bytes(range(256)) * (5 * MiB // 256)


class SlowWriter:
    def __init__(self, path: Path) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.wait_written()

    def wait_written(self, timeout: float = 60) -> None:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready and self.proc.stdout.readline() == "wrote\n", "the writer did not write"

    def next(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0


def wait_until(what: str, cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def test_fsck_repair_aborts_a_stale_upload_and_leaves_a_live_one_alone(bucket, mount_factory, tmp_path):
    m = mount_factory(bucket, extra_args=["--part-size", "5"])
    (m.path / "app").mkdir()
    stale_key, live_key = bucket.key("app/stale.bin"), bucket.key("app/live.bin")
    stale = bucket.s3.client.create_multipart_upload(Bucket=bucket.name, Key=stale_key)["UploadId"]
    bucket.s3.client.upload_part(Bucket=bucket.name, Key=stale_key, UploadId=stale, PartNumber=1, Body=b"s" * (5 * MiB))
    grace = 4
    writer = SlowWriter(m.path / "app" / "live.bin")  # one full part: the mount starts its upload
    try:
        wait_until("the mount starts its upload", lambda: live_key in uploads(bucket).values())
        live = next(u for u, k in uploads(bucket).items() if k == live_key)
        time.sleep(grace + 1)  # both uploads began longer ago than the grace...
        writer.next()  # ... but the live one gets a new part now (a slow push still going)
        writer.wait_written()

        def parts() -> int:
            return len(bucket.s3.client.list_parts(Bucket=bucket.name, Key=live_key, UploadId=live).get("Parts", []))

        wait_until("the mount sends the second part", lambda: parts() == 2)
        res = ocifs_tool(bucket, "fsck", "--grace", str(grace), "--repair", check=False)
        assert f"multipart: {stale_key}: incomplete multipart upload {stale}" in res.stdout, res.describe()
        assert "[removed]" in res.stdout and live not in res.stdout, res.describe()
        assert uploads(bucket) == {live: live_key}
        writer.next()
        writer.wait_written()
    finally:
        writer.close()
    assert bucket.get("app/live.bin") == PART + b"x" + PART + b"end"  # the live upload completed
    assert uploads(bucket) == {}


# --- progress -------------------------------------------------------------------------------
def read_all(fd: int, timeout: float = 120) -> bytes:
    """Everything written to a pty master until the other side is closed (bounded)."""
    import select

    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every writer closed the pty
                return out
            if not chunk:
                return out
            out += chunk
    pytest.fail(f"no EOF on the terminal after {timeout}s")


@pytest.mark.parametrize("command", ["gc", "fsck"])
def test_progress_is_drawn_on_a_terminal_and_absent_otherwise(bucket, mount, tmp_path, command):
    import pty
    import subprocess

    push(mount, "app:v1", {"v1.txt": b"v1"}, tmp_path / "v1")
    args = [*ocifs_bin(), command, bucket.url, "--endpoint-url", bucket.s3.endpoint]
    quiet = run(args, env=bucket.s3.env())  # stderr is a file here
    assert quiet.stderr == "", quiet.describe()
    assert "\r" not in quiet.stdout and re.search(rf"^{command}: ", quiet.stdout, re.M), quiet.describe()
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, env=bucket.s3.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        drawn = read_all(master)
        stdout = proc.communicate(timeout=120)[0].decode()
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\r" in drawn and f"{command}: ".encode() in drawn, drawn
    assert drawn.endswith(b"\r\x1b[K"), "the progress line is not erased at the end"
    assert "\r" not in stdout and re.search(rf"^{command}: ", stdout, re.M), stdout  # stdout stays plain
