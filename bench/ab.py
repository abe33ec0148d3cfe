"""Before/after: two (or more) ocifs variants, interleaved, on one private S3.

    python -m bench.ab --profile cloud --sizes 1G --reps 3 --variant before=HEAD~1 --variant after=HEAD
    python -m bench.ab --variant crt=. --variant aio=.,OCIFS_DATA_PLANE=aiobotocore

For each repetition and blob case, every variant (order rotated per repetition) runs
``oras push --oci-layout`` into a fresh mount (timed until the blobs are in S3), then ``oras
pull --oci-layout`` on another fresh mount after drop_caches (digests checked). Each step
records wall time and CPU seconds per GiB of oras, of the daemon (and of each of its threads)
and of MinIO + toxiproxy: on this shared 2-core box wall times drift with other people's jobs,
CPU per GiB much less, and ratios between variants of one run hold.

Prints one table (medians, and each variant against the first) and writes ``runs.jsonl``,
``summary.md`` and ``machine.json`` to ``--out`` (default ``bench/results/ab-<date>``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from bench.common import CLEANUP, log, make_workdir, median
from bench.harness import parse_cases
from bench.lab import Blobs, Lab, Variant, cleanup, pull_cold, push
from bench.netem import PROFILES

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cloud", choices=sorted(PROFILES))
    p.add_argument("--sizes", default="1G", help="single blobs, e.g. 64M,1G")
    p.add_argument("--multi", default="", help="multi-blob cases SIZExCOUNT, e.g. 16Mx8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--variant", action="append", required=True, metavar="NAME=REV[,ENV=V][,--flag=v]",
                   help="ocifs at a git revision (. = working tree), with environment and mount flags; the first is the baseline")
    p.add_argument("--workloads", default="push,pull-cold", help="push,pull-cold; pull-cold alone: one push per case and repetition serves every variant's pull")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    variants = [Variant.parse(v) for v in a.variant]
    cases = [Blobs(c.size, c.count) for c in parse_cases(a.sizes, a.multi)]
    want = set(a.workloads.split(","))
    out = a.out or RESULTS / f"ab-{a.profile}-{dt.datetime.now():%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)

    CLEANUP.install()
    work = make_workdir("ocifs-ab-")
    for v in variants:
        v.prepare(work)
    lab = Lab.start(a.profile, work)
    home = work / "home"
    home.mkdir()
    (out / "machine.json").write_text(json.dumps({
        "argv": sys.argv[1:], "profile": a.profile, "profile_doc": PROFILES[a.profile]["doc"],
        "variants": {v.name: {"rev": v.rev, "commit": v.commit, "env": {k: x for k, x in v.env.items() if k != "PYTHONPATH"},
                              "args": v.args} for v in variants},
        "nproc": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "started": dt.datetime.now().isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    runs: list[dict] = []
    try:
        for case in cases:
            case.make(work)
            for rep in range(a.reps):
                order = variants[rep % len(variants):] + variants[: rep % len(variants)]
                if "push" not in want:  # pulls only: one push (by the first variant) serves them all
                    shared = f"ab-{case.name.lower()}-{rep}"
                    _unit(lab, variants[0], case, shared, rep, home, {"push"}, keep=True)
                for v in order:
                    repo = f"ab-{case.name.lower()}-{v.name}-{rep}" if "push" in want else shared
                    for rec in _unit(lab, v, case, repo, rep, home, want, keep="push" not in want):
                        runs.append(rec)
                        with open(out / "runs.jsonl", "a") as f:
                            f.write(json.dumps(rec, default=str) + "\n")
                        log(_line(rec))
                if "push" not in want:
                    cleanup(lab, shared)
            case.drop()
    except KeyboardInterrupt:
        log("[ab] interrupted: summarizing what ran")
    finally:
        CLEANUP.run_all()
    text = summarize(runs, [v.name for v in variants], os.getloadavg())
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if runs and all(r["ok"] for r in runs) else 1


def _unit(lab: Lab, v: Variant, case: Blobs, repo: str, rep: int, home: Path, want: set[str], keep: bool = False) -> list[dict]:
    """``want``: "push" and/or "pull-cold" (a pull without a push reads ``repo`` as it is);
    ``keep``: leave ``repo`` in the bucket."""
    base = {"variant": v.name, "commit": v.commit, "case": case.name, "bytes": case.total, "rep": rep}
    recs = []
    where = lab.work / "mounts" / f"{repo}-{v.name}"
    try:
        if "push" in want:
            m = v.mount(lab, where / "push")
            try:
                recs.append({**base, "workload": "push", "ok": True, **push(lab, m, case, repo, home)})
            finally:
                CLEANUP.pop_run(m.teardown)
        if "pull-cold" in want:
            m = v.mount(lab, where / "pull")
            try:
                recs.append({**base, "workload": "pull-cold", "ok": True, **pull_cold(lab, m, case, repo, home)})
            finally:
                CLEANUP.pop_run(m.teardown)
    except Exception as exc:
        logs = sorted(where.glob("*/ocifs.log"))
        tail = logs[-1].read_text(errors="replace").splitlines()[-40:] if logs else []
        recs.append({**base, "workload": "push" if not recs else "pull-cold", "ok": False, "error": str(exc)[:1000],
                     "daemon_log_tail": tail})
    finally:
        if not keep:
            cleanup(lab, repo)
    return recs


def _line(r: dict) -> str:
    head = f"[ab] {r['workload']:<9} {r['case']:<9} {r['variant']:<10} r{r['rep'] + 1}"
    if not r["ok"]:
        return f"{head} FAILED: {r['error'][:200]}"
    c = r["cpu_s_per_gib"]
    return (f"{head} {r['seconds']:7.2f} s {r['mibps']:7.1f} MiB/s  CPU-s/GiB oras {c['client']:.2f} daemon {c['daemon']:.2f} "
            f"server {c['server']:.2f}  threads {r['daemon_threads']}")


def summarize(runs: list[dict], names: list[str], load_end: tuple[float, float, float]) -> str:
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in runs:
        if r["ok"]:
            groups.setdefault((r["workload"], r["case"]), {}).setdefault(r["variant"], []).append(r)
    lines = ["| workload | case | variant | runs | seconds (median, min–max) | MiB/s | vs " + names[0] +
             " (time) | CPU-s/GiB oras | daemon | MinIO+proxy | daemon threads (CPU-s/GiB) |", "|" + "---|" * 11]
    for (w, case), by in groups.items():
        base = median([r["seconds"] for r in by.get(names[0], [])]) if by.get(names[0]) else None
        for name in names:
            rs = by.get(name)
            if not rs:
                continue
            secs = [r["seconds"] for r in rs]
            gib = rs[0]["bytes"] / (1 << 30)
            med = lambda k: median([r["cpu_s_per_gib"][k] for r in rs])  # noqa: E731
            threads: dict[str, list[float]] = {}
            for r in rs:
                for t, c in r["daemon_threads"].items():
                    threads.setdefault(t, []).append(c / gib)
            tcol = ", ".join(f"{t} {median(v):.2f}" for t, v in sorted(threads.items(), key=lambda kv: -median(kv[1])) if median(v) >= 0.02)
            ratio = f"{base / median(secs):.2f}x" if base else "—"
            lines.append(f"| {w} | {case} | {name} | {len(rs)} | {median(secs):.2f} ({min(secs):.2f}–{max(secs):.2f}) | "
                         f"{median([r['mibps'] for r in rs]):.1f} | {ratio} | {med('client'):.2f} | {med('daemon'):.2f} | "
                         f"{med('server'):.2f} | {tcol} |")
    bad = [r for r in runs if not r["ok"]]
    foot = f"\n{len(runs)} runs, {len(bad)} failed; load average at end {load_end[0]:.1f}. `vs {names[0]}` > 1: faster.\n"
    for r in bad:
        foot += f"- FAILED {r['workload']} {r['case']} {r['variant']} r{r['rep'] + 1}: {r['error'][:300]}\n"
    return "\n".join(lines) + "\n" + foot


if __name__ == "__main__":
    raise SystemExit(main())
