"""A pull after a remount, with each filesystem's persistent local cache, against a cold pull.

The question a CI runner asks: the same base image is pulled job after job; with a disk cache
that outlives the mount, how much faster is the next pull, and how much does it still fetch
from S3? Same run, same MinIO behind the same emulated network (toxiproxy, ``--profile``),
targets interleaved, each with its own persistent cache:

* ocifs ``--disk-cache DIR --disk-cache-size N`` (blobs by digest, verified when written),
* s3fs ``-o use_cache=DIR`` (whole files, kept across mounts unless ``del_cache``),
* rclone ``--vfs-cache-mode full --cache-dir DIR --vfs-cache-max-size N`` (sparse files).

Each repetition and target: an empty cache dir; mount, ``drop_caches``, timed ``oras pull``
(*cold*: everything from S3, the cache fills); unmount; mount again with the same cache dir,
``drop_caches`` (the cache is read from disk, as after a reboot), timed ``oras pull``
(*remount*); unmount. Every pulled file is hashed and compared with the pushed digest (a
mismatch fails the run). S3 requests and bytes come from MinIO's own counters.

    python -m bench.disk_cache [--profile cloud] [--layers 64Mx4,256M] [--reps 3]
        [--targets ocifs,s3fs,rclone] [--results DIR]

The other flags of every target are the harness's (bench/targets.py, bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import targets, workloads
from bench.common import (
    CLEANUP, MiB, Endpoint, OcifsMount, boto_client, drop_caches, log, make_workdir, median,
    minio_metrics, start_minio,
)
from bench.data import Pattern
from bench.harness import ocifs_git
from bench.mount_vs_raw import parse_size
from bench.netem import PROFILES, start_toxiproxy

RESULTS = Path(__file__).resolve().parent / "results"
REPO = "bench-disk-cache"
LAYER_MEDIA = "application/vnd.ocifs.bench.layer"


# --------------------------------------------------------------------------- targets with a cache


class OcifsDisk(targets.Ocifs):
    """ocifs with --disk-cache on the persistent directory of this repetition."""

    def __init__(self, ctx: targets.Ctx, size_mib: int) -> None:
        super().__init__(ctx)
        self.size_mib = size_mib
        self.cache: Path | None = None

    def args(self) -> list[str]:
        return [*super().args(), "--disk-cache", str(self.cache or "DIR"), "--disk-cache-size", str(self.size_mib)]


class OcifsPlain(targets.Ocifs):
    """ocifs without --disk-cache: what the cache costs a cold pull (its remount is cold too)."""

    name = "ocifs-nodisk"

    def __init__(self, ctx: targets.Ctx, size_mib: int) -> None:
        super().__init__(ctx)
        self.cache: Path | None = None


class S3fsCache(targets.S3fs):
    """s3fs with ``use_cache``: whole objects in DIR/<bucket>/..., kept at unmount. s3fs has no
    size bound for it (only ``ensure_diskfree``), so ``size_mib`` is not used."""

    def __init__(self, ctx: targets.Ctx, size_mib: int) -> None:
        super().__init__(ctx)
        self.cache: Path | None = None

    def options(self) -> list[str]:
        return [*super().options(), f"use_cache={self.cache or 'DIR'}"]


class RcloneFull(targets.Rclone):
    """rclone with ``--vfs-cache-mode full``: reads are cached on disk too, across mounts."""

    def __init__(self, ctx: targets.Ctx, size_mib: int) -> None:
        super().__init__(ctx)
        self.size_mib = size_mib
        self.cache: Path | None = None

    def args(self) -> list[str]:
        a = super().args()
        a[a.index("--vfs-cache-mode") + 1] = "full"
        return [*a, "--vfs-cache-max-size", f"{self.size_mib}M"]

    def command(self, mp: Path) -> tuple[list[str], dict]:
        argv, env = super().command(mp)
        assert self.cache is not None
        argv[argv.index("--cache-dir") + 1] = str(self.cache)  # the same dir on every mount
        return argv, env

    def flags(self) -> str:
        return super().flags() + " --cache-dir DIR"


TARGETS = {"ocifs": OcifsDisk, "s3fs": S3fsCache, "rclone": RcloneFull, "ocifs-nodisk": OcifsPlain}


# --------------------------------------------------------------------------- the run


def parse_layers(text: str) -> list[int]:
    """``64Mx4,256M`` -> [64 MiB] * 4 + [256 MiB]."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        size, _, count = part.partition("x")
        out += [parse_size(size)] * int(count or 1)
    return out


def make_layers(work: Path, sizes: list[int]) -> list[tuple[str, Path, str, int]]:
    d = work / "src"
    d.mkdir()
    out = []
    for i, size in enumerate(sizes):
        name = f"layer{i:02d}.bin"
        digest = Pattern(1000 + i).write_file(str(d / name), size)
        out.append((name, d / name, digest, size))
    return out


def push_image(env: workloads.Env, direct: Endpoint, bucket: str, layers) -> None:
    """Push once through a plain ocifs mount straight to MinIO (untimed setup)."""
    m = OcifsMount(env.workdir / "mnt" / "setup", env.workdir / "state" / "setup-cache",
                   env.workdir / "state" / "setup.log", direct, f"s3://{bucket}")
    m.mount()
    try:
        files = [f"{name}:{LAYER_MEDIA}" for name, *_ in layers]
        workloads.checked(workloads.oras(env, "push", "--oci-layout", f"{m.path}/{REPO}:v1", *files,
                                         cwd=layers[0][1].parent), "oras push")
    finally:
        CLEANUP.pop_run(m.teardown)


def pull_once(env: workloads.Env, t: targets.Target, layers, phase: str, rep: int) -> dict:
    """Mount, drop caches, timed oras pull, digests checked, unmount."""
    mnt = t.mount()
    out = env.workdir / "out" / f"{t.name}-{rep}-{phase}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        drop_caches()
        meter = workloads.Meter(env, t.pid)
        workloads.checked(workloads.oras(env, "pull", "--oci-layout", f"{mnt}/{REPO}:v1", "-o", str(out)),
                          f"oras pull ({phase})")
        res = meter.stop()
        workloads.verify_pulled(out, layers)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        t.umount()
    total = sum(s for *_, s in layers)
    s3 = res["s3"]
    return {
        "target": t.name, "phase": phase, "rep": rep, "ok": True, "seconds": round(res["seconds"], 3),
        "mibps": round(total / MiB / res["seconds"], 1), "bytes": total,
        "gets": int(s3.get("req:GetObject", 0)), "heads": int(s3.get("req:HeadObject", 0)),
        "s3_mib_sent": round(s3.get("tx_bytes", 0) / MiB, 1),
        "client_cpu_s": res["client_cpu_s"], "daemon_cpu_s": res["daemon_cpu_s"],
        "daemon_peak_rss_bytes": res["daemon_peak_rss_bytes"], "s3": s3,
    }


def run(args: argparse.Namespace) -> int:
    CLEANUP.install()
    work = make_workdir("ocifs-bench-disk-")
    server = start_minio(work)
    if PROFILES[args.profile]["toxics"] is None:
        ep = server.endpoint
    else:
        _, proxy = start_toxiproxy(work, server.endpoint.url.removeprefix("http://"), args.profile)
        ep = Endpoint(proxy, server.endpoint.access_key, server.endpoint.secret_key)
    bucket = "ocifs-bench"
    client = boto_client(server.endpoint)
    client.create_bucket(Bucket=bucket)
    ctx = targets.Ctx(ep, bucket, work, args.concurrency, args.part_size)
    env = workloads.Env(args.profile, ctx, client, lambda: minio_metrics(server.endpoint.direct_url), work)

    tgts = []
    for name in [x.strip() for x in args.targets.split(",") if x.strip()]:
        if name not in TARGETS:
            raise SystemExit(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
        t = TARGETS[name](ctx, args.cache_size)
        why = t.missing()
        if why:
            raise SystemExit(f"target {name} cannot run: {why}")
        tgts.append(t)

    machine = {
        "argv": ["python", "-m", "bench.disk_cache", *sys.argv[1:]], "profile": args.profile, "profile_doc": PROFILES[args.profile]["doc"],
        "reps": args.reps, "host": platform.node(), "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
        "ocifs_git": ocifs_git(),
        "targets": {t.name: {"version": t.version(), "flags": t.flags()} for t in tgts},
    }
    cache_root = work / "disk-cache"
    if args.cache_root:
        cache_root = Path(tempfile.mkdtemp(prefix="ocifs-bench-caches-", dir=args.cache_root))
        CLEANUP.push(f"caches {cache_root}", lambda: shutil.rmtree(cache_root, ignore_errors=True))
    sizes = parse_layers(args.layers)
    layers = make_layers(work, sizes)
    log(f"[bench] pushing {len(layers)} layers ({sum(sizes) // MiB} MiB) ...")
    push_image(env, server.endpoint, bucket, layers)

    date = dt.datetime.now().strftime("%Y%m%d-%H%M")
    out = args.results or RESULTS / f"disk-cache-{args.profile}-{date}"
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs.jsonl"
    runs.write_text("")
    records: list[dict] = []
    try:
        for rep in range(args.reps):
            for t in tgts[rep % len(tgts):] + tgts[: rep % len(tgts)]:
                t.cache = cache_root / f"{t.name}-{rep}"
                shutil.rmtree(t.cache, ignore_errors=True)
                t.cache.mkdir(parents=True)
                for phase in ("cold", "remount"):
                    try:
                        r = pull_once(env, t, layers, phase, rep)
                    except Exception as exc:
                        r = {"target": t.name, "phase": phase, "rep": rep, "ok": False,
                             "error": f"{type(exc).__name__}: {exc}"[:1000]}
                    r["cache_dir_mib"] = round(_du(t.cache) / MiB, 1)
                    records.append(r)
                    with open(runs, "a") as f:
                        f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
                    log(_line(r))
                shutil.rmtree(t.cache, ignore_errors=True)
                t.cache = None
    finally:
        CLEANUP.run_all()

    machine.update(layers=sizes, loadavg_at_end=os.getloadavg(), finished=dt.datetime.now().isoformat(timespec="seconds"))
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    report = render(records, machine)
    (out / "report.md").write_text(report)
    print(report)
    bad = [r for r in records if not r["ok"]]
    for r in bad:
        log(f"[bench] FAILED {r['target']} {r['phase']} rep {r['rep'] + 1}: {r['error'][:300]}")
    return 1 if bad else 0


def _du(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def _line(r: dict) -> str:
    if not r["ok"]:
        return f"[bench] {r['target']:<7} {r['phase']:<8} r{r['rep'] + 1}  FAILED: {r['error'][:160]}"
    return (f"[bench] {r['target']:<7} {r['phase']:<8} r{r['rep'] + 1}  {r['seconds']:7.2f} s  {r['mibps']:7.1f} MiB/s  "
            f"GET {r['gets']:4d}  from S3 {r['s3_mib_sent']:7.1f} MiB  cache dir {r['cache_dir_mib']:7.1f} MiB")


def render(records: list[dict], machine: dict) -> str:
    """Medians per target and phase, and the remount/cold speed-up of each target."""
    lines = [
        f"# Pull after remount with a persistent cache ({machine['profile']}: {machine['profile_doc']})",
        "",
        f"Image: {len(machine['layers'])} layers, {sum(machine['layers']) // MiB} MiB; "
        f"{machine['reps']} interleaved repetitions, medians; load average {machine['loadavg_at_start'][0]:.1f} at the start, "
        f"{machine['loadavg_at_end'][0]:.1f} at the end; ocifs {machine['ocifs_git']}. `{' '.join(machine['argv'])}`",
        "",
        "| target | cold pull s | remount pull s | speed-up | GETs cold / remount | MiB from S3 cold / remount | daemon CPU s cold / remount | cache dir MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in machine["targets"]:
        by = {p: [r for r in records if r["target"] == name and r["phase"] == p and r["ok"]] for p in ("cold", "remount")}
        if not by["cold"] or not by["remount"]:
            lines.append(f"| {name} | failed | | | | | | |")
            continue
        keys = ("seconds", "gets", "s3_mib_sent", "daemon_cpu_s", "cache_dir_mib")
        med = {p: {k: median([r[k] for r in rs if r.get(k) is not None]) for k in keys} for p, rs in by.items()}
        c, w = med["cold"], med["remount"]
        spread = {p: f"{min(r['seconds'] for r in rs):.2f}–{max(r['seconds'] for r in rs):.2f}" for p, rs in by.items()}
        lines.append(
            f"| {name} | {c['seconds']:.2f} ({spread['cold']}) | {w['seconds']:.2f} ({spread['remount']}) | "
            f"{c['seconds'] / w['seconds']:.1f}x | {c['gets']:.0f} / {w['gets']:.0f} | "
            f"{c['s3_mib_sent']:.0f} / {w['s3_mib_sent']:.0f} | {c['daemon_cpu_s']:.2f} / {w['daemon_cpu_s']:.2f} | "
            f"{w['cache_dir_mib']:.0f} |"
        )
    lines += ["", "Flags:", ""]
    for name, t in machine["targets"].items():
        lines.append(f"- {name} ({t['version']}): `{t['flags']}`")
    failed = [r for r in records if not r["ok"]]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['target']} {r['phase']} rep {r['rep'] + 1}: {r['error'][:300]}" for r in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.disk_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cloud", choices=sorted(PROFILES), help="network profile (default cloud)")
    p.add_argument("--layers", default="64Mx4,256M", help="layer sizes, SIZE[xCOUNT],... (default 64Mx4,256M)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list (default {','.join(TARGETS)})")
    p.add_argument("--cache-size", type=int, default=10240, help="MiB bound of every target's disk cache (default 10240)")
    p.add_argument("--concurrency", type=int, default=16, help="S3 requests in flight (every target, as in the harness)")
    p.add_argument("--part-size", type=int, default=8, help="MiB per part / ranged GET (every target)")
    p.add_argument("--cache-root", type=Path, default=None,
                   help="where the targets' persistent caches live (default: the work dir, on the disk MinIO uses)")
    p.add_argument("--results", type=Path, default=None, help="results dir (default bench/results/disk-cache-<profile>-<date>)")
    args = p.parse_args(argv)
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    t0 = time.monotonic()
    rc = run(args)
    log(f"[bench] done in {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
