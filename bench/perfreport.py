"""The report's goal tables, CPU per GiB and their plots (called by :func:`bench.report.build`).

The goal (the issue's): push and cold pull at >= 0.85x the raw S3 API, that is of the faster of
s5cmd and aiobotocore at the same concurrency, and never slower than a FUSE peer. So per
workload one table with cases as columns and targets as rows: every cell is MiB/s and its ratio
to that best raw number, and a ``goal`` row holds 0.85x of it. On this 2-core box every target
is CPU-bound (MinIO and toxiproxy share the cores), so the next table says where the CPU goes:
seconds per GiB of the client (oras, fio, s5cmd, the raw client), of the FUSE daemon, and of
MinIO + toxiproxy.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bench.common import MiB, median
from bench.targets import ALL, FUSE

GOAL = 0.85
RAW = ("raw", "s5cmd")
WORKLOADS = ("push", "pull-cold", "pull-warm")


def _blob_count(s: dict) -> int:
    """Blobs in a summary row's case: "64MiBx8" -> 8, "64MiB" -> 1."""
    return int(s["case"].split("x")[1]) if "x" in s["case"] else 1


def _case_key(s: dict) -> tuple[int, int]:
    count = _blob_count(s)
    return (count > 1, s["size_bytes"] * count)


def sections(out: Path, summary: list[dict], runs: list[dict], mach: dict | None = None) -> list[str]:
    by = {(s["workload"], s["case"], s["target"]): s for s in summary}
    latency = first_byte_latency(mach or {})
    targets = [t for t in ALL if any(s["target"] == t for s in summary)]
    L: list[str] = []
    for w in WORKLOADS:
        rows = [s for s in summary if s["workload"] == w and s.get("median_mibps")]
        if not rows:
            continue
        cases = sorted({s["case"] for s in rows}, key=lambda c: _case_key(next(s for s in rows if s["case"] == c)))
        best_raw = {c: max((by[(w, c, t)]["median_mibps"] for t in RAW if (w, c, t) in by and by[(w, c, t)].get("median_mibps")),
                           default=None) for c in cases}
        L.append(f"## {w}: MiB/s (ratio to the best raw client) and the goal\n")
        L.append(f"Each cell: median MiB/s and, in parentheses, its ratio to the faster of `raw` (aiobotocore) and "
                 f"`s5cmd` in that column. The `goal` row is {GOAL}x of that; ocifs cells say **goal** when they reach it "
                 "and **< peer** when a FUSE peer was faster."
                 + (" `oras-local` is oras on a local-disk layout (no S3). The `oras floor` row is the most any "
                    "filesystem under `oras push` can reach: oras reads and hashes every file before it writes a "
                    "byte (oras-local's prepass), only then can an upload start, at best at the faster raw "
                    f"client's pace, and a close that means \"in S3\" waits one response ({latency * 1000:.0f} ms "
                    f"here) for each of the {SERIAL_CLOSES} small files oras closes one after another."
                    if w == "push" else "") + "\n")
        L.append("| target | " + " | ".join(cases) + " |")
        L.append("|---|" + "---|" * len(cases))
        for t in targets:
            cells = []
            for c in cases:
                s = by.get((w, c, t))
                if s is None or not s.get("median_mibps"):
                    cells.append("FAILED" if s is not None else "—")
                    continue
                v, b = s["median_mibps"], best_raw[c]
                cell = f"{v:.1f}" + (f" ({v / b:.2f})" if b else "")
                if t == "ocifs":
                    peers = [by[(w, c, p)]["median_mibps"] for p in FUSE if p != "ocifs" and (w, c, p) in by and by[(w, c, p)].get("median_mibps")]
                    marks = (["**goal**"] if b and v >= GOAL * b else []) + (["**< peer**"] if peers and v < max(peers) else [])
                    cell += " " + " ".join(marks) if marks else ""
                cells.append(cell)
            L.append(f"| {t} | " + " | ".join(cells) + " |")
        L.append(f"| goal ({GOAL}x best raw) | " + " | ".join(f"{GOAL * best_raw[c]:.1f}" if best_raw[c] else "—" for c in cases) + " |")
        if w == "push":
            L += _floor_rows(by, cases, latency)
        L.append("")
    L += cpu_table(summary, targets)
    plots = plot(out, summary, by, targets)
    if plots:
        L.append("## Goal plots\n")
        L += [f"![{p}]({p})" for p in plots]
        L.append("")
    return L


# `oras push` closes these files one after another, each close a PUT that must be answered
# before it returns: oci-layout and index.json before the first blob byte, the manifest and
# index.json twice after the last (the config goes up beside the blob). The raw clients have none.
SERIAL_CLOSES = 5


def first_byte_latency(mach: dict) -> float:
    """Seconds the profile's toxics add to every response (0 without a proxy)."""
    return sum(t.get("attributes", {}).get("latency", 0) for t in mach.get("toxics") or []
               if t.get("type") == "latency") / 1000


def push_floor(by: dict, case: str, latency: float = 0.0) -> float | None:
    """MiB/s that no filesystem under `oras push` can beat: oras reads and hashes every file
    before it writes a byte (``oras-local``'s ``prepass_seconds``), and only then can anything
    be uploaded, at best as fast as the faster raw client moves the same bytes; a filesystem
    whose close means "in S3" then adds one response ``latency`` per serial small close."""
    local = by.get(("push", case, "oras-local"))
    raws = [by[("push", case, t)] for t in RAW if ("push", case, t) in by and by[("push", case, t)].get("median_seconds")]
    if not local or local.get("median_prepass_seconds") is None or not raws:
        return None
    total_mib = local["size_bytes"] * _blob_count(local) / MiB
    seconds = local["median_prepass_seconds"] + min(r["median_seconds"] for r in raws) + SERIAL_CLOSES * latency
    return total_mib / seconds


def _floor_rows(by: dict, cases: list[str], latency: float) -> list[str]:
    floors = {c: push_floor(by, c, latency) for c in cases}
    if not any(floors.values()):
        return []
    oc = {c: (by.get(("push", c, "ocifs")) or {}).get("median_mibps") for c in cases}
    return [
        "| oras floor: prepass + best raw + closes | " + " | ".join(f"{floors[c]:.1f}" if floors[c] else "—" for c in cases) + " |",
        "| ocifs / oras floor | " + " | ".join(f"{oc[c] / floors[c]:.2f}" if floors[c] and oc[c] else "—" for c in cases) + " |",
    ]


def cpu_per_gib(summary: list[dict], targets: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """Median over cases of >= 64 MiB of CPU seconds per GiB moved: (workload, target) ->
    {client, daemon, server}. Small cases are left out: their fixed costs (process start-up,
    mount lookups) would swamp the per-byte cost."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in summary:
        if s["workload"] not in WORKLOADS or not s.get("n_ok"):
            continue
        count = _blob_count(s)
        if s["size_bytes"] * count < 64 * MiB:
            continue
        gib = s["size_bytes"] * count / (1024 * MiB)
        for part in ("client", "daemon", "server"):
            v = s.get(f"median_{part}_cpu_s")
            if v is not None:
                acc[(s["workload"], s["target"])][part].append(v / gib)
    return {k: {p: median(v) for p, v in parts.items()} for k, parts in acc.items()}


def cpu_table(summary: list[dict], targets: list[str]) -> list[str]:
    cpu = cpu_per_gib(summary, targets)
    if not cpu:
        return []
    L = ["## CPU seconds per GiB (median over cases >= 64 MiB)\n",
         "client = oras / s5cmd / the raw client (and the harness's own polls); daemon = the FUSE daemon; "
         "server = MinIO + toxiproxy. The box has 2 cores: a push or pull can go no faster than all three "
         "together allow.\n",
         "| target | " + " | ".join(f"{w} client | {w} daemon | {w} server" for w in WORKLOADS) + " |",
         "|---|" + "---|" * (3 * len(WORKLOADS))]
    for t in targets:
        cells = []
        for w in WORKLOADS:
            c = cpu.get((w, t), {})
            cells += [f"{c[p]:.2f}" if p in c else "—" for p in ("client", "daemon", "server")]
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def plot(out: Path, summary: list[dict], by: dict, targets: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=90)
    drawn = False
    for ax, w in zip(axes, ("push", "pull-cold")):
        rows = [s for s in summary if s["workload"] == w and "x" not in s["case"] and s.get("median_mibps")]
        sizes = sorted({s["size_bytes"] for s in rows})
        for t in targets:
            if t in RAW:
                continue
            pts = []
            for size in sizes:
                case = next((s["case"] for s in rows if s["size_bytes"] == size), None)
                raws = [by[(w, case, r)]["median_mibps"] for r in RAW if (w, case, r) in by and by[(w, case, r)].get("median_mibps")]
                s = by.get((w, case, t))
                if s and s.get("median_mibps") and raws:
                    pts.append((size / MiB, s["median_mibps"] / max(raws)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t, linewidth=2.5 if t == "ocifs" else 1.2)
                drawn = True
        ax.axhline(GOAL, color="k", linestyle="--", label=f"goal {GOAL}x")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("blob size (MiB)")
        ax.set_ylabel("MiB/s / best raw client")
        ax.set_title(f"{w}: ratio to the best raw client")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(out / "goal.png")
        names.append("goal.png")
    plt.close(fig)
    cpu = cpu_per_gib(summary, targets)
    if cpu:
        fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(13, 4), dpi=90, sharey=True)
        for ax, w in zip(axes, WORKLOADS):
            ts = [t for t in targets if (w, t) in cpu]
            bottom = [0.0] * len(ts)
            for part, color in (("client", "tab:blue"), ("daemon", "tab:orange"), ("server", "tab:gray")):
                vals = [cpu[(w, t)].get(part, 0.0) for t in ts]
                ax.bar(ts, vals, bottom=bottom, label=part, color=color)
                bottom = [b + v for b, v in zip(bottom, vals)]
            ax.set_title(f"{w}: CPU-s per GiB")
            ax.tick_params(axis="x", rotation=45)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "cpu.png")
        plt.close(fig)
        names.append("cpu.png")
    return names
