"""summary.json, report.md and PNG plots from a results dir (runs.jsonl + machine.json)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bench import perfreport
from bench.common import MiB, median
from bench.targets import ALL, FUSE

LATENCY = {"meta-tags", "meta-list", "meta-manifest"}
ORDER = ["push", "pull-cold", "pull-warm", "fio-seqwrite", "fio-seqread", "randread",
         "meta-tags", "meta-list", "meta-manifest", "zot-pull"]
TARGET_ORDER = list(ALL) + ["zot-s3"]  # zot-pull: zot's own S3 driver beside zot on each mount


def load(out: Path) -> tuple[list[dict], dict]:
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    mach = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}
    return runs, mach


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["profile"], r["workload"], r["case"], r["size_bytes"], r["target"])].append(r)
    out = []
    for (profile, workload, case, size, target), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        mib = [r["mibps"] for r in ok if r.get("mibps") is not None]
        secs = [r["seconds"] for r in ok]
        rss = [r["daemon_peak_rss_bytes"] for r in ok if r.get("daemon_peak_rss_bytes")]
        dcpu = [r["daemon_cpu_s"] for r in ok if r.get("daemon_cpu_s") is not None]
        ccpu = [r["client_cpu_s"] for r in ok if r.get("client_cpu_s") is not None]
        rec = {
            "profile": profile, "workload": workload, "case": case, "size_bytes": size, "target": target,
            "median_mibps": round(median(mib), 2) if mib else None,
            "min_mibps": round(min(mib), 2) if mib else None, "max_mibps": round(max(mib), 2) if mib else None,
            "median_seconds": round(median(secs), 4) if secs else None,
            "min_seconds": round(min(secs), 4) if secs else None, "max_seconds": round(max(secs), 4) if secs else None,
            "runs": [{"rep": r["rep"], "ok": r["ok"], "mibps": None if r.get("mibps") is None else round(r["mibps"], 2),
                      "seconds": None if not r["ok"] else round(r["seconds"], 4), "error": r.get("error") or None}
                     for r in rs],
            "n_ok": len(ok), "n_failed": len(rs) - len(ok),
            "peak_rss_bytes": max(rss) if rss else None,
            "median_daemon_cpu_s": round(median(dcpu), 3) if dcpu else None,
            "median_client_cpu_s": round(median(ccpu), 3) if ccpu else None,
            "median_server_cpu_s": _median_of(ok, "server_cpu_s"),
        }
        pre = [r["extra"]["prepass_seconds"] for r in ok if r.get("extra", {}).get("prepass_seconds") is not None]
        if pre:
            rec["median_prepass_seconds"] = round(median(pre), 3)
        amp = [r["extra"].get("s3_bytes_per_byte_read") for r in ok if r.get("extra", {}).get("s3_bytes_per_byte_read")]
        if amp:
            rec["median_s3_bytes_per_byte_read"] = median(amp)
        reqs: dict[str, list] = defaultdict(list)
        for r in ok:
            for k, v in (r.get("s3") or {}).items():
                reqs[k].append(v)
        if reqs:
            rec["median_s3"] = {k: median(v) for k, v in sorted(reqs.items())}
        out.append(rec)
    out.sort(key=lambda s: (ORDER.index(s["workload"]) if s["workload"] in ORDER else 99, s["size_bytes"],
                            s["case"], TARGET_ORDER.index(s["target"]) if s["target"] in TARGET_ORDER else 99))
    return out


def _median_of(runs: list[dict], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return round(median(xs), 3) if xs else None


def _metric(s: dict | None, workload: str) -> float | None:
    if s is None:
        return None
    return s["median_seconds"] if workload in LATENCY else s["median_mibps"]


def _fmt(v: float | None, workload: str) -> str:
    if v is None:
        return "—"
    if workload in LATENCY:
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"
    return f"{v:.1f}"


def _ratio(ocifs: float | None, other: float | None, workload: str) -> str:
    if not ocifs or not other:
        return "—"
    r = other / ocifs if workload in LATENCY else ocifs / other  # > 1: ocifs is faster
    return f"{r:.2f}x"


def build(out: Path) -> None:
    runs, mach = load(out)
    summary = summarize(runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    targets = [t for t in TARGET_ORDER if any(s["target"] == t for s in summary)]
    fuse_peers = [t for t in targets if t in FUSE and t != "ocifs"]
    by = {(s["workload"], s["case"], s["target"]): s for s in summary}
    rows = sorted({(s["workload"], s["case"], s["size_bytes"]) for s in summary},
                  key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99, k[2], k[1]))
    L = []
    prof = mach.get("profile", "?")
    L.append(f"# ocifs benchmark: profile `{prof}`\n")
    L.append(f"{mach.get('profile_doc', '')}. Started {mach.get('started', '?')}, wall {mach.get('wall_seconds', '?')} s, "
             f"concurrency {mach.get('concurrency')}, part/chunk {mach.get('part_size_mib')} MiB. "
             f"Machine: {mach.get('nproc')} CPUs ({mach.get('cpu')}), {mach.get('memory')}, kernel {mach.get('kernel')}; "
             f"load average {fmt_load(mach.get('loadavg_at_start'))} at start, {fmt_load(mach.get('loadavg_at_end'))} at end "
             "(the box is shared: other jobs skew single runs; look at min–max). "
             f"ocifs at {mach.get('versions', {}).get('ocifs_git', '?')} at start, {mach.get('ocifs_git_at_end', '?')} at end "
             "(other engineers edit ocifs/ while benchmarks run; each mount runs the code on disk at that moment).\n")
    bad = [r for r in runs if not r["ok"]]
    L.append(f"**{len(runs)} runs, {len(bad)} failed.** Every pull's files were hashed and compared with the pushed digests.\n")
    if mach.get("skipped"):
        L.append("**Skipped (loudly):**\n")
        for k, v in mach["skipped"].items():
            L.append(f"- **{k}**: {v}")
        L.append("")
    L.append("## Headline: medians per workload\n")
    L.append("MiB/s (higher is better) except meta-* (latency, lower is better). Ratios: > 1 means ocifs is "
             "faster; `vs raw` compares with aiobotocore at the same concurrency (the limit), `vs best FUSE` with "
             "the fastest of the other filesystems on that row. randread cells add S3 bytes fetched per byte read "
             "(S3 B/B).\n")
    hdr = ["workload", "case"] + targets + ["ocifs vs raw", "ocifs vs best FUSE"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for w, case, _ in rows:
        cells = [w, case]
        for t in targets:
            s = by.get((w, case, t))
            if s is None:
                cells.append("n/a")
            elif s["n_ok"] == 0:
                cells.append("FAILED")
            else:
                v = _fmt(_metric(s, w), w) + (f" ({s['n_failed']} failed)" if s["n_failed"] else "")
                if s.get("median_s3_bytes_per_byte_read") is not None:
                    v += f" ({s['median_s3_bytes_per_byte_read']:g} S3 B/B)"
                cells.append(v)
        oc = _metric(by.get((w, case, "ocifs")), w)
        cells.append(_ratio(oc, _metric(by.get((w, case, "raw")), w), w))
        peers = [(_metric(by.get((w, case, t)), w), t) for t in fuse_peers]
        peers = [(v, t) for v, t in peers if v]
        if peers:
            best = min(peers) if w in LATENCY else max(peers)
            cells.append(f"{_ratio(oc, best[0], w)} ({best[1]})")
        else:
            cells.append("—")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Spread, CPU and memory\n")
    L.append("min–max over repetitions; CPU seconds = client (oras/fio/s5cmd/this process) + FUSE daemon; "
             "RSS = daemon peak (VmHWM) of the mount that ran the step.\n")
    L.append("| workload | case | target | median | min–max | client cpu s | daemon cpu s | daemon peak RSS MiB | S3 requests (median) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        w = s["workload"]
        if s["n_ok"] == 0:
            L.append(f"| {w} | {s['case']} | {s['target']} | FAILED | | | | | |")
            continue
        if w in LATENCY:
            spread = f"{_fmt(s['min_seconds'], w)}–{_fmt(s['max_seconds'], w)}"
        else:
            spread = f"{s['min_mibps']:.1f}–{s['max_mibps']:.1f}"
        req = ", ".join(f"{k[4:]} {v:g}" for k, v in (s.get("median_s3") or {}).items() if k.startswith("req:"))
        amp = s.get("median_s3_bytes_per_byte_read")
        if amp:
            req += f"; S3 bytes per byte read {amp:g}"
        rss = f"{s['peak_rss_bytes'] / MiB:.0f}" if s.get("peak_rss_bytes") else "—"
        L.append(f"| {w} | {s['case']} | {s['target']} | {_fmt(_metric(s, w), w)} | {spread} | "
                 f"{s['median_client_cpu_s']} | {s['median_daemon_cpu_s'] if s['median_daemon_cpu_s'] is not None else '—'} | "
                 f"{rss} | {req} |")
    L.append("")
    if bad:
        L.append("## Failed runs\n")
        for r in bad:
            L.append(f"- {r['workload']} {r['case']} {r['target']} rep {r['rep'] + 1}: `{r['error'][:400]}`")
        L.append("")
    plots = make_plots(out, summary)
    if plots:
        L.append("## Plots\n")
        for p in plots:
            L.append(f"![{p}]({p})")
        L.append("")
    L += perfreport.sections(out, summary, runs, mach)
    L.append("## Machine and tools\n")
    L.append("```json")
    L.append(json.dumps({k: mach.get(k) for k in ("nproc", "cpu", "memory", "kernel", "os", "versions", "flags", "toxics")},
                        indent=1))
    L.append("```")
    (out / "report.md").write_text("\n".join(L) + "\n")


def fmt_load(x) -> str:
    return "?" if not x else f"{x[0]:.2f}"


def make_plots(out: Path, summary: list[dict]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    for w in ("push", "pull-cold", "pull-warm"):
        rows = [s for s in summary if s["workload"] == w and "x" not in s["case"] and s["median_mibps"]]
        if len({s["size_bytes"] for s in rows}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        for t in TARGET_ORDER:
            pts = sorted((s["size_bytes"] / MiB, s["median_mibps"], s["min_mibps"], s["max_mibps"])
                         for s in rows if s["target"] == t)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            lo = [p[1] - p[2] for p in pts]
            hi = [p[3] - p[1] for p in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=t,
                        linestyle="--" if t in ("raw", "s5cmd", "oras-local") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("blob size (MiB)")
        ax.set_ylabel("MiB/s (median, min–max)")
        prof = summary[0]["profile"] if summary else ""
        ax.set_title(f"{w}: one blob, profile {prof}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{w}.png"
        fig.savefig(out / name)
        plt.close(fig)
        names.append(name)
    return names
