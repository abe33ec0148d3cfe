"""The workloads, each for FUSE targets (through a mount) and raw targets (no filesystem).

A *unit* runs one target through a chain of steps on fresh mounts and returns one record per
step: ``blob_unit`` -> push, pull-cold, pull-warm; ``fio_unit`` -> fio-seqwrite, fio-seqread,
randread; ``meta_unit`` -> meta-tags, meta-list, meta-manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import raw
from bench.common import (
    MiB, children_cpu_seconds, drop_caches, log, metrics_delta, peak_rss_bytes, proc_cpu_seconds,
    self_cpu_seconds, tool, warm_files,
)
from bench.data import Pattern, sha256_file
from bench.targets import Target

BLOB_MEDIA = "application/vnd.ocifs.bench.blob"
N_META = 1000


class StepFailed(Exception):
    """A step ran but its result is wrong (digest mismatch, missing output)."""


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    profile: str
    ctx: object  # targets.Ctx
    client: object  # botocore client that talks to S3 directly (not through the proxy)
    counters: Callable[[], dict]  # S3 requests/bytes counters (MinIO + proxy), may be {}
    workdir: Path
    randread_seconds: float = 10.0
    fio_size: int = 256 * MiB
    direct_endpoint: object = None  # S3 without the proxy (setup); defaults to ctx.endpoint
    server_pids: list = field(default_factory=list)  # MinIO and toxiproxy: their CPU per step
    _src: dict = field(default_factory=dict)
    _proxied_client: object = None

    @property
    def bucket(self) -> str:
        return self.ctx.bucket

    @property
    def endpoint(self):
        return self.ctx.endpoint


# --------------------------------------------------------------------------- measuring


class Meter:
    """Wall time, client CPU (this process + reaped children), daemon CPU and S3 counters."""

    def __init__(self, env: Env, pid: int | None) -> None:
        self.env, self.pid = env, pid
        self.m0 = env.counters()
        self.c0 = self_cpu_seconds() + children_cpu_seconds()
        self.d0 = proc_cpu_seconds(pid)
        self.s0 = self._server_cpu()
        self.t0 = time.perf_counter()
        self.polls = 0

    def _server_cpu(self) -> float | None:
        return sum(proc_cpu_seconds(p) or 0.0 for p in self.env.server_pids) if self.env.server_pids else None

    def stop(self) -> dict:
        seconds = time.perf_counter() - self.t0
        s1 = self._server_cpu()
        d1 = proc_cpu_seconds(self.pid)
        c1 = self_cpu_seconds() + children_cpu_seconds()
        s3 = metrics_delta(self.m0, self.env.counters())
        if self.polls and "req:ListObjectsV2" in s3:
            s3["req:ListObjectsV2"] -= self.polls  # our own completion polls
            if not s3["req:ListObjectsV2"]:
                del s3["req:ListObjectsV2"]
        return {
            "seconds": seconds,
            "client_cpu_s": round(c1 - self.c0, 3),
            "daemon_cpu_s": None if self.d0 is None or d1 is None else round(d1 - self.d0, 3),
            "server_cpu_s": None if s1 is None or self.s0 is None else round(s1 - self.s0, 3),
            "daemon_peak_rss_bytes": peak_rss_bytes(self.pid),
            "s3": {k: int(v) for k, v in s3.items()},
        }


@dataclass
class Cmd:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    first_entry_seconds: float | None = None  # see run_cmd's ``watch``


def run_cmd(argv: list[str], *, cwd=None, env=None, timeout: float = 3600, watch: Path | None = None) -> Cmd:
    """Run a client command; its CPU shows up in the Meter through children_cpu_seconds.

    ``watch``: a directory to poll (every 2 ms, until something appears in it) for when the
    command wrote its first file there: for `oras push`, the end of the pass that reads and
    hashes every file before it writes a byte."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=out, stderr=err, start_new_session=True)
        first = None
        try:
            while watch is not None and first is None and p.poll() is None:
                if _has_entry(watch):
                    first = time.perf_counter() - t0
                elif time.perf_counter() - t0 > timeout:
                    raise subprocess.TimeoutExpired(argv, timeout)
                else:
                    time.sleep(0.002)
            p.wait(timeout=max(0.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            _kill_group(p)
            raise StepFailed(f"{Path(argv[0]).name} timed out after {timeout:.0f} s")
        except BaseException:  # Ctrl-C: do not leave the client holding a mount busy
            _kill_group(p)
            raise
        dt = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Cmd(p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), dt, first)


def _has_entry(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return next(it, None) is not None
    except FileNotFoundError:
        return False


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, 9)  # the client runs in its own session, started by us
    except ProcessLookupError:
        pass
    p.wait()


def checked(c: Cmd, what: str) -> Cmd:
    if c.returncode != 0:
        raise StepFailed(f"{what} exited {c.returncode}: {(c.stderr or c.stdout).strip()[-600:]}")
    return c


def oras_env(env: Env) -> dict:
    e = dict(os.environ)
    home = env.workdir / "oras-home"
    home.mkdir(exist_ok=True)
    e["HOME"] = str(home)
    e.pop("DOCKER_CONFIG", None)
    return e


def oras(env: Env, *args, cwd=None, timeout: float = 3600, watch: Path | None = None) -> Cmd:
    exe = tool("oras")
    if exe is None:
        raise StepFailed("oras not found in .tools/bin: run scripts/setup.sh")
    return run_cmd([exe, *args], cwd=cwd, env=oras_env(env), timeout=timeout, watch=watch)


def wait_keys(env: Env, meter: Meter, prefix: str, expected: dict[str, int], timeout: float = 900) -> float:
    """Poll (ListObjectsV2, direct to S3) until every key has its size; return seconds waited."""
    t0 = time.perf_counter()
    delay = 0.02
    while True:
        found: dict[str, int] = {}
        for page in env.client.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=prefix):
            meter.polls += 1
            for o in page.get("Contents", []):
                found[o["Key"]] = o["Size"]
        if all(found.get(k) == s or (s < 0 and k in found) for k, s in expected.items()):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            missing = [k for k, s in expected.items() if found.get(k) != s and not (s < 0 and k in found)]
            raise StepFailed(f"{len(missing)} object(s) never appeared in S3 after {timeout:.0f} s: {missing[:3]}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def delete_prefix(env: Env, prefix: str) -> None:
    from bench.common import delete_prefix as dp

    dp(env.client, env.bucket, prefix)


def _finish(env: Env, target: Target, case: str, size: int, rep: int, recs: list[dict]) -> None:
    """Unmount after a unit; an unmount that fails is a failed run of its own ("unmount")."""
    if target.kind != "fuse":
        return
    try:
        target.umount()
    except Exception as exc:
        recs.append(failed(env, "unmount", case, size, target, rep, exc))


def _quiet_delete(env: Env, prefix: str) -> None:
    try:
        delete_prefix(env, prefix)
    except Exception as exc:
        log(f"[bench] could not delete {prefix}: {type(exc).__name__}: {exc}")


def record(env: Env, workload: str, case: str, size: int, target: Target, rep: int, m: dict | None,
           nbytes: int | None, ok: bool = True, error: str = "", **extra) -> dict:
    r = {
        "profile": env.profile, "workload": workload, "case": case, "size_bytes": size, "target": target.name,
        "rep": rep, "ok": ok, "error": error, "bytes": nbytes,
    }
    if m:
        r.update(m)
        if nbytes and m.get("seconds"):
            r["mibps"] = nbytes / MiB / m["seconds"]
    r.setdefault("mibps", None)
    r["extra"] = extra
    return r


def failed(env, workload, case, size, target, rep, exc: BaseException) -> dict:
    msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StepFailed) else str(exc)
    return record(env, workload, case, size, target, rep, None, None, ok=False, error=msg[:2000])


# --------------------------------------------------------------------------- blobs: push / pull


@dataclass
class BlobCase:
    name: str  # e.g. "64MiB" or "64MiBx8"
    count: int
    size: int

    @property
    def total(self) -> int:
        return self.count * self.size


def source_blobs(env: Env, case: BlobCase) -> list[tuple[str, Path, str, int]]:
    """Local source files for a case: (file name, path, sha256, size); made once per run."""
    if case.name in env._src:
        return env._src[case.name]
    d = env.workdir / "src" / case.name
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(case.count):
        name = f"blob{i:02d}.bin"
        seed = int(hashlib.sha256(f"{case.name}/{i}".encode()).hexdigest()[:8], 16)
        digest = Pattern(seed).write_file(str(d / name), case.size)
        out.append((name, d / name, digest, case.size))
    env._src[case.name] = out
    return out


def drop_sources(env: Env, case: BlobCase) -> None:
    env._src.pop(case.name, None)
    shutil.rmtree(env.workdir / "src" / case.name, ignore_errors=True)


def verify_pulled(outdir: Path, blobs) -> None:
    bad = []
    for name, _, digest, size in blobs:
        p = outdir / name
        if not p.exists():
            bad.append(f"{name}: missing")
            continue
        got, n = sha256_file(str(p))
        if got != digest or n != size:
            bad.append(f"{name}: sha256 {got[:12]}.. ({n} bytes), pushed {digest[:12]}.. ({size} bytes)")
    if bad:
        raise StepFailed("DIGEST CHECK FAILED: " + "; ".join(bad))


def blob_unit(env: Env, target: Target, case: BlobCase, rep: int, want: set[str]) -> list[dict]:
    blobs = source_blobs(env, case)
    repo = f"bench-{case.name.lower()}-{target.name}-{rep}"
    expected = {f"{repo}/blobs/sha256/{d}": s for _, _, d, s in blobs}
    expected[f"{repo}/index.json"] = -1
    size = case.size
    recs: list[dict] = []
    try:
        warm_files(p for _, p, _, _ in blobs)
        if target.kind == "fuse":
            recs += _blob_fuse(env, target, case, rep, blobs, repo, expected, want)
        elif target.kind == "local":
            recs += _blob_local(env, target, case, rep, blobs, repo, want)
        elif target.name == "raw":
            recs += _blob_raw(env, target, case, rep, blobs, repo, want)
        else:
            recs += _blob_s5cmd(env, target, case, rep, blobs, repo, want)
    except Exception as exc:  # the chain stops at the first failure; later steps are failed too
        done = {r["workload"] for r in recs}
        for w in ("push", "pull-cold", "pull-warm"):
            if w not in done and (w in want or w == "push"):
                recs.append(failed(env, w, case.name, size, target, rep, exc))
                exc = StepFailed(f"not run: an earlier step failed ({str(exc)[:200]})")
    finally:
        _finish(env, target, case.name, size, rep, recs)
        _quiet_delete(env, repo + "/")
    return recs


def _pull_dir(env: Env, repo: str, kind: str) -> Path:
    """An empty directory for a pull's files; for a cold pull the page cache is dropped too."""
    out = env.workdir / "out" / f"{repo}-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if kind == "pull-cold":
        drop_caches()
    return out


def _blob_fuse(env, target, case, rep, blobs, repo, expected, want):
    recs = []
    mnt = target.mount()
    files = [f"{name}:{BLOB_MEDIA}" for name, *_ in blobs]
    m = Meter(env, target.pid)
    c = checked(oras(env, "push", "--oci-layout", f"{mnt}/{repo}:v1", *files, cwd=blobs[0][1].parent), "oras push")
    wait = wait_keys(env, m, repo + "/", expected)
    res = m.stop()
    t0 = time.perf_counter()
    target.umount()
    recs.append(record(env, "push", case.name, case.size, target, rep, res, case.total,
                       oras_seconds=round(c.seconds, 3), durable_wait_seconds=round(wait, 3),
                       umount_seconds=round(time.perf_counter() - t0, 3), blobs=case.count))
    if not ({"pull-cold", "pull-warm"} & want):
        return recs
    mnt = target.mount()
    for kind in ("pull-cold", "pull-warm"):
        recs.append(_oras_pull(env, target, case, rep, blobs, repo, f"{mnt}/{repo}:v1", kind, target.pid))
    return recs


def _oras_pull(env, target, case, rep, blobs, repo, ref: str, kind: str, pid: int | None, **extra) -> dict:
    """``oras pull --oci-layout ref`` into an empty directory (page cache dropped for a cold
    pull), the files checked against the pushed digests; the run's record."""
    out = _pull_dir(env, repo, kind)
    m = Meter(env, pid)
    checked(oras(env, "pull", "--oci-layout", ref, "-o", str(out)), f"oras pull ({kind})")
    res = m.stop()
    verify_pulled(out, blobs)
    shutil.rmtree(out, ignore_errors=True)
    return record(env, kind, case.name, case.size, target, rep, res, case.total, blobs=case.count,
                  digests_checked=True, **extra)


def _blob_local(env, target, case, rep, blobs, repo, want):
    """oras alone, on a layout on the bench's local disk: what the client itself costs, and
    how long `oras push` reads and hashes its files before it writes a byte (no filesystem
    can upload anything sooner: the push's floor is that pass plus the raw upload)."""
    recs = []
    layout = env.workdir / "local" / repo
    shutil.rmtree(layout, ignore_errors=True)
    layout.parent.mkdir(parents=True, exist_ok=True)
    try:
        files = [f"{name}:{BLOB_MEDIA}" for name, *_ in blobs]
        m = Meter(env, None)
        c = checked(oras(env, "push", "--oci-layout", f"{layout}:v1", *files, cwd=blobs[0][1].parent,
                         watch=layout / "ingest"), "oras push")
        res = m.stop()
        if c.first_entry_seconds is None:
            raise StepFailed("oras push wrote no file under ingest/ (has oras changed how it pushes?)")
        recs.append(record(env, "push", case.name, case.size, target, rep, res, case.total, blobs=case.count,
                           prepass_seconds=round(c.first_entry_seconds, 3), note="local disk, no S3"))
        for kind in ("pull-cold", "pull-warm"):
            if kind in want:
                recs.append(_oras_pull(env, target, case, rep, blobs, repo, f"{layout}:v1", kind, None,
                                       note="local disk, no S3"))
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    return recs


def _raw_timed(res: dict, t) -> dict:
    """The raw target's time is the transfer's, measured after its client was warm."""
    res["wall_seconds_with_client_setup"] = round(res["seconds"], 4)
    res["seconds"] = t.seconds
    s3 = res.get("s3") or {}
    if s3.get("req:ListObjectsV2"):  # the client's one warm-up request
        s3["req:ListObjectsV2"] -= 1
        if not s3["req:ListObjectsV2"]:
            del s3["req:ListObjectsV2"]
    return res


def _blob_raw(env, target, case, rep, blobs, repo, want):
    c = env.ctx
    part, conc = c.part_size_mib * MiB, c.concurrency
    recs = []
    m = Meter(env, None)
    t = raw.upload_files(env.endpoint, env.bucket, [(f"{repo}/blobs/sha256/{d}", str(p)) for _, p, d, _ in blobs],
                         part, conc)
    recs.append(record(env, "push", case.name, case.size, target, rep, _raw_timed(m.stop(), t), case.total,
                       blobs=case.count, note="one warm client; timed transfer only"))
    for kind in ("pull-cold", "pull-warm"):
        if kind not in want:
            continue
        out = _pull_dir(env, repo, kind)
        m = Meter(env, None)
        t = raw.download_files(env.endpoint, env.bucket, [(f"{repo}/blobs/sha256/{d}", str(out / n)) for n, _, d, _ in blobs],
                               part, conc)
        if not t.ok:
            raise StepFailed(t.detail)
        res = _raw_timed(m.stop(), t)
        verify_pulled(out, blobs)
        shutil.rmtree(out, ignore_errors=True)
        recs.append(record(env, kind, case.name, case.size, target, rep, res, case.total, blobs=case.count,
                           digests_checked=True, note="no cache: warm = cold"))
    return recs


def s5cmd_run(env: Env, target, lines: list[str]) -> Cmd:
    f = env.workdir / "s5cmd-commands.txt"
    f.write_text("\n".join(lines) + "\n")
    return checked(run_cmd([tool("s5cmd"), *target.args(), "run", str(f)], env=env.endpoint.env()), "s5cmd run")


def _blob_s5cmd(env, target, case, rep, blobs, repo, want):
    recs = []
    cp = " ".join(target.cp_args())
    m = Meter(env, None)
    s5cmd_run(env, target, [f"cp {cp} {p} s3://{env.bucket}/{repo}/blobs/sha256/{d}" for _, p, d, _ in blobs])
    recs.append(record(env, "push", case.name, case.size, target, rep, m.stop(), case.total, blobs=case.count))
    for kind in ("pull-cold", "pull-warm"):
        if kind not in want:
            continue
        out = _pull_dir(env, repo, kind)
        m = Meter(env, None)
        s5cmd_run(env, target, [f"cp {cp} s3://{env.bucket}/{repo}/blobs/sha256/{d} {out / n}" for n, _, d, _ in blobs])
        res = m.stop()
        verify_pulled(out, blobs)
        shutil.rmtree(out, ignore_errors=True)
        recs.append(record(env, kind, case.name, case.size, target, rep, res, case.total, blobs=case.count,
                           digests_checked=True, note="no cache: warm = cold"))
    return recs


# --------------------------------------------------------------------------- fio


def fio(env: Env, *args) -> dict:
    exe = tool("fio")
    if exe is None:
        raise StepFailed("fio not installed (Debian package fio)")
    c = checked(run_cmd([exe, "--output-format=json", *args], env=dict(os.environ)), "fio")
    text = c.stdout
    try:
        return json.loads(text[text.index("{"):])
    except (ValueError, json.JSONDecodeError) as exc:
        raise StepFailed(f"fio printed no JSON: {text[:300]}") from exc


def fio_unit(env: Env, target: Target, rep: int, want: set[str]) -> list[dict]:
    size = env.fio_size
    case = f"{size // MiB}MiB"
    rel = f"bench-fio/{target.name}-{rep}.dat"
    recs: list[dict] = []
    try:
        if target.kind == "fuse":
            recs += _fio_fuse(env, target, rep, size, case, rel, want)
        elif target.name == "raw":
            recs += _fio_raw(env, target, rep, size, case, rel, want)
        else:
            recs += _fio_s5cmd(env, target, rep, size, case, rel, want)
    except Exception as exc:
        done = {r["workload"] for r in recs}
        for w in ("fio-seqwrite", "fio-seqread", "randread"):
            if w not in done and (w in want or w == "fio-seqwrite"):
                if target.name == "s5cmd" and w == "randread":
                    continue
                recs.append(failed(env, w, case, size, target, rep, exc))
                exc = StepFailed(f"not run: an earlier step failed ({str(exc)[:200]})")
    finally:
        _finish(env, target, case, size, rep, recs)
        _quiet_delete(env, rel)
    return recs


def _amplification(s3: dict, nbytes: int) -> float | None:
    sent = s3.get("tx_bytes") or s3.get("wire_down_bytes")
    return round(sent / nbytes, 2) if sent and nbytes else None


def _fio_fuse(env, target, rep, size, case, rel, want):
    recs = []
    mnt = target.mount()
    path = mnt / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    m = Meter(env, target.pid)
    j = fio(env, "--name=seqwrite", f"--filename={path}", "--rw=write", "--bs=1M", f"--size={size}",
            "--ioengine=psync", "--end_fsync=1", "--fallocate=none")
    wait = wait_keys(env, m, rel, {rel: size})
    res = m.stop()
    fio_bw = j["jobs"][0]["write"]["bw_bytes"] / MiB
    target.umount()
    recs.append(record(env, "fio-seqwrite", case, size, target, rep, res, size, fio_mibps=round(fio_bw, 1),
                       durable_wait_seconds=round(wait, 3)))
    if "fio-seqread" in want:
        mnt = target.mount()
        drop_caches()
        m = Meter(env, target.pid)
        j = fio(env, "--name=seqread", f"--filename={mnt / rel}", "--rw=read", "--bs=1M", f"--size={size}",
                "--ioengine=psync", "--readonly")
        res = m.stop()
        rd = j["jobs"][0]["read"]
        if rd["io_bytes"] != size:
            raise StepFailed(f"fio read {rd['io_bytes']} of {size} bytes")
        rec = record(env, "fio-seqread", case, size, target, rep, res, size,
                     fio_mibps=round(rd["bw_bytes"] / MiB, 1), wall_mibps=round(size / MiB / res["seconds"], 1))
        rec["mibps"] = rd["bw_bytes"] / MiB  # fio's own number (excludes fio start-up)
        recs.append(rec)
        target.umount()
    if "randread" in want:
        mnt = target.mount()
        drop_caches()
        m = Meter(env, target.pid)
        j = fio(env, "--name=randread", f"--filename={mnt / rel}", "--rw=randread", "--bs=4k", f"--size={size}",
                "--ioengine=psync", "--readonly", "--norandommap", "--randrepeat=1", "--time_based",
                f"--runtime={env.randread_seconds}")
        res = m.stop()
        rd = j["jobs"][0]["read"]
        n = rd["io_bytes"]
        rec = record(env, "randread", case, size, target, rep, res, n, iops=round(rd["iops"], 1),
                     s3_bytes_per_byte_read=_amplification(res["s3"], n),
                     lat_p50_us=round(rd.get("clat_ns", {}).get("percentile", {}).get("50.000000", 0) / 1000, 1))
        rec["mibps"] = rd["bw_bytes"] / MiB
        recs.append(rec)
        target.umount()
    return recs


def _fio_raw(env, target, rep, size, case, rel, want):
    c = env.ctx
    part, conc = c.part_size_mib * MiB, c.concurrency
    pat = Pattern(7)
    recs = []
    m = Meter(env, None)
    t = raw.upload_pattern(env.endpoint, env.bucket, rel, size, part, conc, pat)
    recs.append(record(env, "fio-seqwrite", case, size, target, rep, _raw_timed(m.stop(), t), size,
                       note="multipart upload"))
    if "fio-seqread" in want:
        drop_caches()
        m = Meter(env, None)
        t = raw.download_pattern(env.endpoint, env.bucket, rel, part, conc, pat)
        if not t.ok:
            raise StepFailed(t.detail)
        recs.append(record(env, "fio-seqread", case, size, target, rep, _raw_timed(m.stop(), t), size,
                           note="ranged GETs, checked and discarded"))
    if "randread" in want:
        m = Meter(env, None)
        t = raw.randread(env.endpoint, env.bucket, rel, size, 4096, env.randread_seconds)
        if not t.ok:
            raise StepFailed(t.detail)
        res = _raw_timed(m.stop(), t)
        recs.append(record(env, "randread", case, size, target, rep, res, t.bytes,
                           iops=round(t.bytes / 4096 / res["seconds"], 1),
                           s3_bytes_per_byte_read=_amplification(res["s3"], t.bytes),
                           note="one 4 KiB ranged GET at a time"))
    return recs


def _fio_s5cmd(env, target, rep, size, case, rel, want):
    src = env.workdir / "src" / f"fio-{size}.dat"
    if not src.exists():
        Pattern(7).write_file(str(src), size)
    cp = " ".join(target.cp_args())
    recs = []
    m = Meter(env, None)
    s5cmd_run(env, target, [f"cp {cp} {src} s3://{env.bucket}/{rel}"])
    recs.append(record(env, "fio-seqwrite", case, size, target, rep, m.stop(), size, note="s5cmd cp of a local file"))
    if "fio-seqread" in want:
        out = env.workdir / "out" / "s5cmd-fio.dat"
        out.parent.mkdir(parents=True, exist_ok=True)
        drop_caches()
        m = Meter(env, None)
        s5cmd_run(env, target, [f"cp {cp} s3://{env.bucket}/{rel} {out}"])
        recs.append(record(env, "fio-seqread", case, size, target, rep, m.stop(), size, note="s5cmd cp to a local file"))
        out.unlink(missing_ok=True)
    return recs  # randread: s5cmd has no ranged reads


# --------------------------------------------------------------------------- metadata


META_TAGS = "bench-meta-tags"
META_LIST = "bench-meta-list"


def _put_many(env: Env, items: list[tuple[str, bytes]]) -> None:
    # directory markers first, then the files under them
    raw.put_many(env.direct_endpoint, env.bucket, [kv for kv in items if kv[0].endswith("/")])
    raw.put_many(env.direct_endpoint, env.bucket, [kv for kv in items if not kv[0].endswith("/")])


def meta_setup(env: Env) -> dict:
    """Write (directly to S3, untimed) a layout with 1,000 tags and 1,000 small layouts.

    Directory marker objects (``dir/``) are written too, as s3fs and ocifs create them.
    """
    t0 = time.perf_counter()
    config = b"{}"
    cfg_d = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.ocifs.bench",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": f"sha256:{cfg_d}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": f"sha256:{cfg_d}", "size": len(config)}],
    }).encode()
    man_d = hashlib.sha256(manifest).hexdigest()
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    tags = [f"tag-{i:04d}" for i in range(N_META)]
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{man_d}",
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": t}} for t in tags]}).encode()
    items = [
        (f"{META_TAGS}/", b""), (f"{META_TAGS}/blobs/", b""), (f"{META_TAGS}/blobs/sha256/", b""),
        (f"{META_TAGS}/oci-layout", layout), (f"{META_TAGS}/index.json", index),
        (f"{META_TAGS}/blobs/sha256/{man_d}", manifest), (f"{META_TAGS}/blobs/sha256/{cfg_d}", config),
        (f"{META_LIST}/", b""),
    ]
    small_index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    for i in range(N_META):
        r = f"{META_LIST}/repo-{i:04d}"
        items += [(f"{r}/", b""), (f"{r}/oci-layout", layout), (f"{r}/index.json", small_index)]
    _put_many(env, items)
    return {"manifest_digest": f"sha256:{man_d}", "manifest": manifest, "tags": tags,
            "objects": len(items), "setup_seconds": round(time.perf_counter() - t0, 1)}


def meta_teardown(env: Env) -> None:
    delete_prefix(env, META_TAGS + "/")
    delete_prefix(env, META_LIST + "/")


def meta_unit(env: Env, target: Target, rep: int, want: set[str], info: dict) -> list[dict]:
    recs = []
    for w in ("meta-tags", "meta-list", "meta-manifest"):
        if w not in want:
            continue
        if target.kind == "fuse":
            fn = {"meta-tags": _tags_fuse, "meta-list": _list_fuse, "meta-manifest": _manifest_fuse}[w]
        else:
            fn = {"meta-tags": _tags_raw, "meta-list": _list_raw, "meta-manifest": _manifest_raw}[w]
        try:
            recs.append(fn(env, target, rep, info))
        except Exception as exc:
            recs.append(failed(env, w, "1000", 0, target, rep, exc))
        finally:
            _finish(env, target, "1000", 0, rep, recs)
    return recs


def _tags_fuse(env, target, rep, info):
    mnt = target.mount()
    m = Meter(env, target.pid)
    c = checked(oras(env, "repo", "tags", "--oci-layout", f"{mnt}/{META_TAGS}"), "oras repo tags")
    res = m.stop()
    got = c.stdout.split()
    if sorted(got) != info["tags"]:
        raise StepFailed(f"oras repo tags listed {len(got)} tags, expected {N_META}")
    return record(env, "meta-tags", "1000", 0, target, rep, res, None, items=len(got))


def _list_fuse(env, target, rep, info):
    mnt = target.mount()
    m = Meter(env, target.pid)
    n = 0
    with os.scandir(mnt / META_LIST) as it:
        for e in it:
            if e.is_dir() and os.path.exists(os.path.join(e.path, "oci-layout")):
                n += 1
    res = m.stop()
    if n != N_META:
        raise StepFailed(f"listed {n} repos, expected {N_META}")
    return record(env, "meta-list", "1000", 0, target, rep, res, None, items=n,
                  what="scandir + stat <repo>/oci-layout")


def _manifest_fuse(env, target, rep, info):
    mnt = target.mount()
    times = []
    res = None
    for i in range(6):
        tag = info["tags"][(rep * 97 + i * 131) % N_META]
        m = Meter(env, target.pid)
        c = checked(oras(env, "manifest", "fetch", "--oci-layout", f"{mnt}/{META_TAGS}:{tag}"), "oras manifest fetch")
        r = m.stop()
        if c.stdout.encode().strip() != info["manifest"].strip():
            raise StepFailed("oras manifest fetch returned different bytes than were stored")
        if res is None:
            res = r
        times.append(r["seconds"])
    warm = sorted(times[1:])[len(times[1:]) // 2]
    return record(env, "meta-manifest", "1000", 0, target, rep, res, None, cold_seconds=round(times[0], 4),
                  warm_median_seconds=round(warm, 4))


def _proxied(env: Env):
    """A sync botocore client through the benchmark endpoint (the proxy), made once, untimed."""
    if env._proxied_client is None:
        import botocore.config
        import botocore.session

        ep = env.endpoint
        env._proxied_client = botocore.session.get_session().create_client(
            "s3", endpoint_url=ep.url, region_name=ep.region, aws_access_key_id=ep.access_key,
            aws_secret_access_key=ep.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 5, "mode": "standard"}))
        # warm up: connection, operation models (a long-running client pays these once)
        env._proxied_client.list_objects_v2(Bucket=env.bucket, MaxKeys=1)
        try:
            env._proxied_client.get_object(Bucket=env.bucket, Key=f"{META_TAGS}/oci-layout")["Body"].read()
        except Exception:
            pass
    return env._proxied_client


def _raw_get(env: Env, key: str) -> bytes:
    return _proxied(env).get_object(Bucket=env.bucket, Key=key)["Body"].read()


def _tags_raw(env, target, rep, info):
    if target.name == "s5cmd":
        m = Meter(env, None)
        c = s5cmd_run(env, target, [f"cat s3://{env.bucket}/{META_TAGS}/index.json"])
        res = m.stop()
        body = c.stdout
    else:
        _proxied(env)  # client creation outside the timed part
        m = Meter(env, None)
        body = _raw_get(env, f"{META_TAGS}/index.json")
        res = m.stop()
    tags = [x["annotations"]["org.opencontainers.image.ref.name"] for x in json.loads(body)["manifests"]]
    if sorted(tags) != info["tags"]:
        raise StepFailed("index.json does not hold the 1,000 tags")
    return record(env, "meta-tags", "1000", 0, target, rep, res, None, items=len(tags), what="GET index.json")


def _list_raw(env, target, rep, info):
    if target.name == "s5cmd":
        m = Meter(env, None)
        c = s5cmd_run(env, target, [f"ls s3://{env.bucket}/{META_LIST}/"])
        res = m.stop()
        n = sum(1 for line in c.stdout.splitlines() if "repo-" in line)
    else:
        cl = _proxied(env)
        m = Meter(env, None)
        n = 0
        for page in cl.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=f"{META_LIST}/", Delimiter="/"):
            n += len(page.get("CommonPrefixes", []))
        res = m.stop()
    if n != N_META:
        raise StepFailed(f"listed {n} repos, expected {N_META}")
    return record(env, "meta-list", "1000", 0, target, rep, res, None, items=n, what="ListObjectsV2 delimiter=/")


def _manifest_raw(env, target, rep, info):
    tag = info["tags"][(rep * 97) % N_META]
    digest = info["manifest_digest"].split(":")[1]
    if target.name == "s5cmd":
        m = Meter(env, None)
        c = s5cmd_run(env, target, [f"cat s3://{env.bucket}/{META_TAGS}/index.json"])
        idx = json.loads(c.stdout)
        d = next(x["digest"] for x in idx["manifests"] if x["annotations"]["org.opencontainers.image.ref.name"] == tag)
        c = s5cmd_run(env, target, [f"cat s3://{env.bucket}/{META_TAGS}/blobs/sha256/{d.split(':')[1]}"])
        res = m.stop()
        body = c.stdout.encode()
    else:
        _proxied(env)
        m = Meter(env, None)
        idx = json.loads(_raw_get(env, f"{META_TAGS}/index.json"))
        d = next(x["digest"] for x in idx["manifests"] if x["annotations"]["org.opencontainers.image.ref.name"] == tag)
        body = _raw_get(env, f"{META_TAGS}/blobs/sha256/{d.split(':')[1]}")
        res = m.stop()
    if hashlib.sha256(body).hexdigest() != digest:
        raise StepFailed("manifest digest mismatch")
    return record(env, "meta-manifest", "1000", 0, target, rep, res, None, what="GET index.json + GET manifest",
                  cold_seconds=round(res["seconds"], 4))
