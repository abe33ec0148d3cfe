"""A private S3 (MinIO behind a network profile) and ocifs mounts of any revision, measured.

Shared by :mod:`bench.ab` (interleaved before/after runs) and :mod:`bench.anatomy` (one push
and one pull, profiled): everything here is about telling where CPU and time go, so every
measurement carries CPU seconds per process (oras, the daemon and each of its threads, MinIO
and toxiproxy), which stay comparable on a shared 2-core box where wall times drift.

A :class:`Variant` is ocifs at a git revision (its ``ocifs/`` tree exported with ``git
archive`` into the work dir and put first on ``PYTHONPATH``; the venv's editable install
comes after it) or the working tree, plus environment variables and mount flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    MiB, REPO, Endpoint, OcifsMount, boto_client, children_cpu_seconds, delete_prefix, drop_caches,
    peak_rss_bytes, proc_cpu_seconds, reset_peak_rss, start_minio, tool, warm_files,
)
from bench.data import Pattern, sha256_file
from bench.netem import PROFILES, start_toxiproxy

BUCKET = "ocifs-lab"
MEDIA = "application/vnd.ocifs.bench.blob"


@dataclass
class Lab:
    """MinIO (and toxiproxy unless the profile is ``loopback``) in a temp dir, one bucket."""

    profile: str
    work: Path
    endpoint: Endpoint  # what mounts and clients use (through the proxy)
    direct: Endpoint  # MinIO itself: setup, completion polls
    server_pids: list[int]
    client: object = None

    @classmethod
    def start(cls, profile: str, work: Path) -> "Lab":
        server = start_minio(work)
        pids = [server.proc.pid]
        ep = server.endpoint
        if PROFILES[profile]["toxics"] is not None:
            tp, url = start_toxiproxy(work, server.endpoint.url.removeprefix("http://"), profile)
            ep = Endpoint(url, ep.access_key, ep.secret_key)
            pids.append(tp.proc.pid)
        lab = cls(profile, work, ep, server.endpoint, pids)
        lab.client = boto_client(server.endpoint)
        lab.client.create_bucket(Bucket=BUCKET)
        return lab

    def server_cpu(self) -> float:
        """CPU seconds of MinIO and toxiproxy so far: the server side of every transfer."""
        return sum(proc_cpu_seconds(p) or 0.0 for p in self.server_pids)

    def wait_keys(self, expected: dict[str, int], timeout: float = 900) -> float:
        """Poll (directly, not through the proxy) until every key has its size."""
        t0 = time.perf_counter()
        while True:
            found = {}
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=os.path.commonprefix(list(expected))):
                found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            if all(found.get(k) == s for k, s in expected.items()):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"objects never appeared in S3: {sorted(set(expected) - set(found))[:3]}")
            time.sleep(0.02)


@dataclass
class Variant:
    """ocifs at ``rev`` (``.`` = the working tree) with extra environment and mount flags."""

    name: str
    rev: str = "."
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    commit: str = ""

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``NAME=REV[,ENV=VALUE...][,--flag=value...]``, e.g. ``before=HEAD~1`` or
        ``aio=.,OCIFS_DATA_PLANE=aiobotocore``."""
        name, _, rest = text.partition("=")
        rev, *opts = rest.split(",") if rest else ["."]
        v = cls(name, rev or ".")
        for o in opts:
            if o.startswith("--"):
                v.args.append(o)
            else:
                k, _, val = o.partition("=")
                v.env[k] = val
        return v

    def prepare(self, work: Path) -> None:
        """Export ``ocifs/`` at ``rev`` (a fixed commit: the branch may move during the run).
        A ``rev`` that is a directory holding ``ocifs/`` is used as it is (experiments)."""
        if Path(self.rev, "ocifs").is_dir():
            self.commit = f"tree {self.rev}"
            self.env = {"PYTHONPATH": str(Path(self.rev).resolve()), **self.env}
            return
        self.commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", self.rev if self.rev != "." else "HEAD"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        if self.rev == ".":
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "ocifs"], capture_output=True, text=True).stdout
            self.commit += "+dirty" if dirty.strip() else ""
            return
        tree = work / "variants" / self.name
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", self.commit, "ocifs"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        self.env = {"PYTHONPATH": str(tree), **self.env}

    def mount(self, lab: Lab, where: Path, extra: list[str] = ()) -> OcifsMount:
        where.mkdir(parents=True, exist_ok=True)
        m = OcifsMount(where / "mnt", where / "cache", where / "ocifs.log", lab.endpoint, f"s3://{BUCKET}",
                       [*self.args, *extra], env=self.env)
        m.mount()
        return m


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by thread name (the main thread is ``fuse``)."""
    out: dict[str, float] = {}
    if pid is None:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
            name = "fuse" if task.name == str(pid) else (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        name = name.rstrip("0123456789 ") or name  # "AwsEventLoop 1", "Trio thread 3": one row
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


@dataclass
class Blobs:
    """Local source files for one push: ``count`` blobs of ``size`` bytes, made once."""

    size: int
    count: int
    files: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        n = f"{self.size // (1024 * MiB)}GiB" if self.size >= 1024 * MiB else f"{self.size // MiB}MiB"
        return n if self.count == 1 else f"{n}x{self.count}"

    @property
    def total(self) -> int:
        return self.size * self.count

    def make(self, work: Path) -> "Blobs":
        d = work / "src" / self.name
        d.mkdir(parents=True, exist_ok=True)
        self.files = []
        for i in range(self.count):
            p = d / f"blob{i:02d}.bin"
            self.files.append((p, Pattern(1000 + i).write_file(str(p), self.size)))
        return self

    def drop(self) -> None:
        if self.files:
            shutil.rmtree(self.files[0][0].parent, ignore_errors=True)


def oras(*args: str, cwd: Path | None = None, home: Path) -> float:
    """Run the oras CLI; returns its wall seconds (its CPU is in children_cpu_seconds)."""
    env = dict(os.environ, HOME=str(home))
    t0 = time.perf_counter()
    r = subprocess.run([tool("oras") or "oras", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"oras {args[0]} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return time.perf_counter() - t0


class Probe:
    """CPU seconds of every party and wall time across one step."""

    def __init__(self, lab: Lab, pid: int | None) -> None:
        self.lab, self.pid = lab, pid
        self.c0, self.s0, self.t0 = children_cpu_seconds(), lab.server_cpu(), time.perf_counter()
        self.d0 = thread_cpu(pid)
        reset_peak_rss(pid)

    def stop(self, nbytes: int) -> dict:
        seconds = time.perf_counter() - self.t0
        threads = delta(thread_cpu(self.pid), self.d0)
        gib = nbytes / (1024 * MiB)
        client, server, daemon = children_cpu_seconds() - self.c0, self.lab.server_cpu() - self.s0, sum(threads.values())
        return {
            "seconds": round(seconds, 3), "mibps": round(nbytes / MiB / seconds, 1),
            "client_cpu_s": round(client, 3), "daemon_cpu_s": round(daemon, 3), "server_cpu_s": round(server, 3),
            "cpu_s_per_gib": {"client": round(client / gib, 3), "daemon": round(daemon / gib, 3), "server": round(server / gib, 3)},
            "daemon_threads": threads,
            "daemon_peak_rss_mib": round((peak_rss_bytes(self.pid) or 0) / MiB),
        }


def push(lab: Lab, m: OcifsMount, blobs: Blobs, repo: str, home: Path) -> dict:
    """``oras push --oci-layout`` until every blob is in S3 (polled directly)."""
    names = [f"{p.name}:{MEDIA}" for p, _ in blobs.files]
    expected = {f"{repo}/blobs/sha256/{d}": blobs.size for _, d in blobs.files}
    warm_files(p for p, _ in blobs.files)
    probe = Probe(lab, m.pid)
    oras_s = oras("push", "--oci-layout", f"{m.path}/{repo}:v1", *names, cwd=blobs.files[0][0].parent, home=home)
    wait = lab.wait_keys(expected)
    return {**probe.stop(blobs.total), "oras_seconds": round(oras_s, 3), "durable_wait_seconds": round(wait, 3)}


def pull_cold(lab: Lab, m: OcifsMount, blobs: Blobs, repo: str, home: Path) -> dict:
    """``oras pull --oci-layout`` on a fresh mount after drop_caches; digests checked."""
    out = lab.work / "out" / repo
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    drop_caches()
    probe = Probe(lab, m.pid)
    oras("pull", "--oci-layout", f"{m.path}/{repo}:v1", "-o", str(out), home=home)
    res = probe.stop(blobs.total)
    for p, digest in blobs.files:
        got, _ = sha256_file(str(out / p.name))
        if got != digest:
            raise RuntimeError(f"DIGEST MISMATCH pulling {p.name}: {got} != {digest}")
    shutil.rmtree(out, ignore_errors=True)
    return res


def cleanup(lab: Lab, repo: str) -> None:
    delete_prefix(lab.client, BUCKET, repo + "/")


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")

