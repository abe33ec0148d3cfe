"""``python -m bench run``: every target, every workload, one network profile, one results dir."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import report, targets, workloads, zot_pull
from bench.common import (
    CLEANUP, MiB, Endpoint, boto_client, log, make_workdir, minio_metrics, start_minio, tool,
)
from bench.netem import PROFILES, start_toxiproxy
from bench.mount_vs_raw import parse_size

ALL_WORKLOADS = ["push", "pull-cold", "pull-warm", "fio-seqread", "fio-seqwrite", "randread",
                 "meta-tags", "meta-list", "meta-manifest", "zot-pull"]
DEFAULT_SIZES = "8M,16M,32M,64M,128M,256M,512M,1G"
DEFAULT_MULTI = "16Mx8,64Mx8,64Mx16"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_cases(single: str, multi: str) -> list[workloads.BlobCase]:
    out = []
    for s in [x for x in single.split(",") if x]:
        n = parse_size(s)
        out.append(workloads.BlobCase(_name(n), 1, n))
    for s in [x for x in multi.split(",") if x]:
        size, _, count = s.lower().partition("x")
        n = parse_size(size)
        out.append(workloads.BlobCase(f"{_name(n)}x{int(count)}", int(count), n))
    return out


def _name(n: int) -> str:
    return f"{n // (1024 * MiB)}GiB" if n >= 1024 * MiB and n % (1024 * MiB) == 0 else f"{n // MiB}MiB"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="ocifs benchmark harness (see bench/README.md)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark matrix")
    r.add_argument("--profile", default="local", choices=sorted(PROFILES),
                   help="network profile (toxiproxy in front of MinIO; loopback: no proxy)")
    r.add_argument("--endpoint-url", default=None, help="benchmark a real S3 endpoint instead (no proxy; AWS_* creds; needs --bucket)")
    r.add_argument("--bucket", default=None, help="bucket on --endpoint-url (objects are written under bench-* names and deleted)")
    r.add_argument("--targets", default=",".join(targets.DEFAULT),
                   help=f"comma list of {', '.join(targets.ALL)} (default: {', '.join(targets.DEFAULT)})")
    r.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma list (default: all)")
    r.add_argument("--quick", action="store_true", help="CI smoke: small sizes, 1 repetition, < 10 min")
    r.add_argument("--full", action="store_true", help="add the 2 GiB blob")
    r.add_argument("--oras-blog", action="store_true",
                   help="the ORAS blog's matrix: single blobs 8M..2G, 16Mx8, 64Mx8, 64Mx16; push, pull-cold, pull-warm")
    r.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    r.add_argument("--sizes", default=None, help=f"single-blob sizes (default {DEFAULT_SIZES})")
    r.add_argument("--multi", default=None, help=f"multi-blob artifacts SIZExCOUNT (default {DEFAULT_MULTI})")
    r.add_argument("--fio-size", type=parse_size, default=None, help="fio file size (default 1G; 64M with --quick)")
    r.add_argument("--randread-seconds", type=float, default=None, help="randread duration (default 15; 3 with --quick)")
    r.add_argument("--concurrency", type=int, default=16, help="S3 requests in flight for ocifs/raw and the peers' equivalents")
    r.add_argument("--part-size", type=int, default=8, help="MiB per part / ranged GET for every target")
    r.add_argument("--results", type=Path, default=None, help="results dir (default bench/results/<profile>-<date>)")
    r.add_argument("--ocifs-arg", action="append", default=[], help="extra `ocifs mount` argument (repeatable)")
    g = sub.add_parser("report", help="rebuild summary.json, report.md and plots from a results dir")
    g.add_argument("results", type=Path)
    return p


def machine(ctx, tgts, skipped, args, profile_doc, toxics) -> dict:
    def first(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:
            return "?"

    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {t.name: t.version() for t in tgts}
    versions.update({
        "oras": first([tool("oras") or "oras", "version"]),
        "fio": first([tool("fio") or "fio", "--version"]),
        "minio": first([tool("minio") or "minio", "--version"]) if not args.endpoint_url else "external",
        "toxiproxy": "none" if toxics is None else first([tool("toxiproxy-server") or "toxiproxy-server", "-version"]),
        "python": sys.version.split()[0],
        "ocifs_git": ocifs_git(),
        "libfuse3": first(["fusermount3", "--version"]),
    })
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
        "os": first(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "loadavg_at_start": os.getloadavg(),
        "versions": versions,
        "flags": {t.name: t.flags() for t in tgts},
        "skipped": skipped,
        "profile": args.profile if not args.endpoint_url else "endpoint",
        "profile_doc": profile_doc, "toxics": toxics,
        "concurrency": ctx.concurrency, "part_size_mib": ctx.part_size_mib,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }


def ocifs_git() -> str:
    """The ocifs commit benchmarked, and how many files under ocifs/ differ from it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "ocifs"], capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
        return f"{head} ({len(dirty)} uncommitted file(s) under ocifs/)"
    except Exception:
        return "?"


def banner(msg: str) -> None:
    bar = "!" * min(100, len(msg) + 8)
    log(f"\n{bar}\n!!! {msg}\n{bar}")


def run(args) -> int:
    t_start = time.monotonic()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    if args.oras_blog:
        args.sizes, args.multi = args.sizes or DEFAULT_SIZES + ",2G", args.multi if args.multi is not None else DEFAULT_MULTI
        if args.workloads == ",".join(ALL_WORKLOADS):
            args.workloads = "push,pull-cold,pull-warm"
    sizes = args.sizes or ("8M,64M" if quick else DEFAULT_SIZES + (",2G" if args.full else ""))
    multi = args.multi if args.multi is not None else ("16Mx4" if quick else DEFAULT_MULTI)
    cases = parse_cases(sizes, multi)
    want = {w.strip() for w in args.workloads.split(",") if w.strip()}
    unknown = want - set(ALL_WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
    profile = "endpoint" if args.endpoint_url else args.profile
    date = dt.datetime.now().strftime("%Y%m%d-%H%M")
    out = args.results or RESULTS / (f"quick-{profile}-{date}" if quick else f"{profile}-{date}")
    out.mkdir(parents=True, exist_ok=True)

    CLEANUP.install()
    work = make_workdir("ocifs-bench-")
    toxics: list | None = None  # None: no proxy
    if args.endpoint_url:
        if not args.bucket:
            raise SystemExit("--endpoint-url needs --bucket")
        ep = Endpoint(args.endpoint_url, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                      region=os.environ.get("AWS_REGION", "us-east-1"))
        client = boto_client(ep)
        bucket = args.bucket
        counters = dict  # no server-side counters on a real S3
        profile_doc = f"real S3 endpoint {args.endpoint_url}, no proxy"
    else:
        server = start_minio(work)
        if PROFILES[args.profile]["toxics"] is None:
            ep = server.endpoint
        else:
            tp, proxy_url = start_toxiproxy(work, server.endpoint.url.removeprefix("http://"), args.profile)
            toxics = tp.toxics()
            ep = Endpoint(proxy_url, server.endpoint.access_key, server.endpoint.secret_key)
        client = boto_client(server.endpoint)  # setup and completion polls bypass the proxy
        bucket = "ocifs-bench"
        client.create_bucket(Bucket=bucket)

        def counters():
            # toxiproxy's byte counters only move when a connection closes (keep-alive
            # connections never do), so bytes come from MinIO's live v3 counters.
            return minio_metrics(server.endpoint.direct_url)

        profile_doc = PROFILES[args.profile]["doc"]
    ctx = targets.Ctx(ep, bucket, work, args.concurrency, args.part_size)
    env = workloads.Env(profile, ctx, client, counters, work,
                        randread_seconds=args.randread_seconds or (3 if quick else 15),
                        fio_size=args.fio_size or (64 * MiB if quick else 1024 * MiB),
                        direct_endpoint=ep if args.endpoint_url else server.endpoint)
    if not args.endpoint_url:
        env.server_pids = [server.proc.pid] + ([tp.proc.pid] if toxics is not None else [])

    tgts, skipped = [], {}
    for name in [x.strip() for x in args.targets.split(",") if x.strip()]:
        if name not in targets.ALL:
            raise SystemExit(f"unknown target {name!r}; known: {', '.join(targets.ALL)}")
        t = targets.ALL[name](ctx, args.ocifs_arg) if name == "ocifs" else targets.ALL[name](ctx)
        why = t.missing()
        if why:
            banner(f"SKIPPED target {name}: {why}")
            skipped[name] = why
        else:
            tgts.append(t)
    if "zot-pull" in want and zot_pull.ZotS3(ctx).missing():
        why = zot_pull.ZotS3(ctx).missing()
        banner(f"SKIPPED workload zot-pull: {why}")
        skipped["zot-pull"] = why
        want.discard("zot-pull")
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        banner("cannot write /proc/sys/vm/drop_caches (not root?): pull-cold is only cold in the filesystem's own cache")

    mach = machine(ctx, tgts, skipped, args, profile_doc, toxics)
    (out / "machine.json").write_text(json.dumps(mach, indent=2) + "\n")

    units: list[tuple] = []
    blob_w = want & {"push", "pull-cold", "pull-warm"}
    fio_w = want & {"fio-seqwrite", "fio-seqread", "randread"}
    meta_w = want & {"meta-tags", "meta-list", "meta-manifest"}
    for rep in range(reps):
        order = tgts[rep % len(tgts):] + tgts[: rep % len(tgts)] if tgts else []
        if blob_w:
            for case in cases:
                units += [("blob", case, rep, t) for t in order]
    # blobs first for every rep of a case would change cache state less; we keep case-major order
    units.sort(key=lambda u: (0, cases.index(u[1]), u[2]) if u[0] == "blob" else (9, 0, u[2]))
    for rep in range(reps):
        order = tgts[rep % len(tgts):] + tgts[: rep % len(tgts)] if tgts else []
        s3_order = [t for t in order if t.kind != "local"]  # oras-local runs the blob workloads only
        if fio_w:
            units += [("fio", None, rep, t) for t in s3_order]
        if meta_w:
            units += [("meta", None, rep, t) for t in s3_order]

    if "zot-pull" in want:
        units += zot_pull.units(cases, reps, tgts, ctx)

    log(f"[bench] profile {profile} ({profile_doc}); targets {', '.join(t.name for t in tgts)}; "
        f"{len(units)} units x steps, {reps} repetition(s); results -> {out}")
    runs_path = out / "runs.jsonl"
    runs_path.write_text("")
    records: list[dict] = []
    meta_info = None
    last_case = None
    interrupted = False
    try:
        for i, (kind, case, rep, t) in enumerate(units, 1):
            if kind == "blob" and last_case is not None and case is not last_case:
                workloads.drop_sources(env, last_case)
            if kind == "meta" and meta_info is None:
                log("[bench] writing the metadata layouts (1,000 tags, 1,000 repos) directly to S3 ...")
                meta_info = workloads.meta_setup(env)
                log(f"[bench]   {meta_info['objects']} objects in {meta_info['setup_seconds']} s")
            if kind == "blob":
                recs = workloads.blob_unit(env, t, case, rep, blob_w | {"push"})
                recs = [r for r in recs if r["workload"] in want]
            elif kind == "fio":
                recs = workloads.fio_unit(env, t, rep, fio_w | {"fio-seqwrite"})
                recs = [r for r in recs if r["workload"] in want]
            elif kind == "zot":
                recs = zot_pull.zot_unit(env, t, case, rep)
            else:
                recs = workloads.meta_unit(env, t, rep, meta_w, meta_info)
            with open(runs_path, "a") as f:
                for r in recs:
                    f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
            records += recs
            for r in recs:
                log(progress_line(i, len(units), time.monotonic() - t_start, r))
            last_case = case if kind == "blob" else last_case
    except KeyboardInterrupt:
        interrupted = True
        banner("interrupted: cleaning up; the report covers the runs finished so far")
    finally:
        try:
            if meta_info is not None:
                workloads.meta_teardown(env)
        except Exception as exc:
            log(f"[bench] meta cleanup failed: {exc}")
        CLEANUP.run_all()

    mach["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    mach["wall_seconds"] = round(time.monotonic() - t_start, 1)
    mach["loadavg_at_end"] = os.getloadavg()
    mach["ocifs_git_at_end"] = ocifs_git()
    (out / "machine.json").write_text(json.dumps(mach, indent=2) + "\n")
    report.build(out)
    bad = [r for r in records if not r["ok"]]
    log(f"\n[bench] {len(records)} runs, {len(bad)} failed, {mach['wall_seconds']:.0f} s; report: {out / 'report.md'}")
    for r in bad:
        log(f"[bench] FAILED {r['workload']} {r['case']} {r['target']} rep {r['rep'] + 1}: {r['error'][:300]}")
    if skipped:
        for k, v in skipped.items():
            log(f"[bench] SKIPPED {k}: {v}")
    if interrupted:
        return 130
    # setup installs every target, so a missing one is a failure of the run, not a footnote
    return 1 if bad or skipped.keys() & targets.ALL.keys() else 0


def progress_line(i: int, n: int, elapsed: float, r: dict) -> str:
    head = f"[{i:3d}/{n} {int(elapsed) // 60:3d}m{int(elapsed) % 60:02d}s] {r['workload']:<13} {r['case']:<9} {r['target']:<7} r{r['rep'] + 1}"
    if not r["ok"]:
        return f"{head}  FAILED: {r['error'][:160]}"
    parts = []
    if r.get("mibps") is not None:
        parts.append(f"{r['mibps']:8.1f} MiB/s")
    parts.append(f"{r['seconds']:7.3f} s")
    if r.get("daemon_cpu_s") is not None:
        parts.append(f"cpu {r['client_cpu_s']:.2f}+{r['daemon_cpu_s']:.2f}")
    else:
        parts.append(f"cpu {r['client_cpu_s']:.2f}")
    if r.get("daemon_peak_rss_bytes"):
        parts.append(f"rss {r['daemon_peak_rss_bytes'] / MiB:.0f}M")
    amp = r.get("extra", {}).get("s3_bytes_per_byte_read")
    if amp is not None:
        parts.append(f"s3/read {amp}x")
    return f"{head}  " + "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "report":
        report.build(args.results)
        print(args.results / "report.md")
        return 0
    return run(args)
