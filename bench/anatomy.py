"""Where the time of one push and one cold pull goes: profiles, thread CPU and a time line.

    python -m bench.anatomy --profile cloud --size 1G [--variant NAME=REV[,ENV=V]] [--native]

One private MinIO (behind the profile's toxiproxy), one ocifs mount at ``--log-level debug``
(which turns on the data path's time-line events, :mod:`ocifs.trace`), then:

1. ``oras push --oci-layout`` of one blob of ``--size`` while ``py-spy record`` samples the
   daemon (every thread, only while on CPU);
2. a fresh mount, drop_caches, ``oras pull --oci-layout`` under py-spy again.

Writes to ``--out`` (default ``bench/results/anatomy-<profile>-<date>``): ``push.svg`` and
``pull.svg`` (flame graphs), ``push.folded``/``pull.folded`` (py-spy's collapsed stacks),
``timeline.png`` (parts or GETs in flight, what the client had written, close), and
``anatomy.md``: CPU seconds per GiB of oras, each daemon thread, MinIO and toxiproxy; the
functions that took the most samples per thread; the push time line in numbers (when parts
started, how many were in flight, how long the writer waited for a part slot, how long close
took after the last write).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import html
import json
import re
import subprocess
import time
from pathlib import Path

from bench.common import CLEANUP, MiB, log, make_workdir, tool
from bench.harness import _name
from bench.lab import Blobs, Lab, Variant, cleanup, pull_cold, push
from bench.mount_vs_raw import parse_size
from bench.netem import PROFILES

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_RATE = 250  # py-spy samples per second (its default, 100, is coarse for a 5 s push)


# --------------------------------------------------------------------------- profiling


class Spy:
    """``py-spy record`` of one process for the duration of a ``with`` block."""

    def __init__(self, pid: int, out: Path, native: bool) -> None:
        # --native needs to stop the process for each sample (py-spy refuses --nonblocking then):
        # slower, so it is an option.
        self.args = [tool("py-spy") or "py-spy", "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE),
                     "--threads", "--format", "raw", "-o", str(out)] + (["--native"] if native else ["--nonblocking"])
        self.out = out

    def __enter__(self) -> "Spy":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(1.0)  # py-spy attaches before the client starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(2)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = b"(killed)"
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


def folded(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            out.append((stack.split(";"), int(n)))
    return out


def _frame(f: str) -> str:
    return re.sub(r" \(.*\)$", "", f)


def top_by_thread(stacks: list[tuple[list[str], int]], n: int = 12) -> dict[str, list[tuple[str, float, float]]]:
    """Per thread: the ``n`` functions with the most samples (self %, inclusive %) of that thread."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: collections.Counter[str] = collections.Counter()
    for frames, k in stacks:
        thread = re.sub(r"^thread \(0x[0-9a-f]+\): ", "", frames[0])
        thread = re.sub(r"^thread \(\d+\): ", "", thread)
        total[thread] += k
        own[thread][_frame(frames[-1])] += k
        for f in {_frame(x) for x in frames[1:]}:
            incl[thread][f] += k
    return {t: [(f, 100 * c / total[t], 100 * incl[t][f] / total[t]) for f, c in own[t].most_common(n)]
            for t in sorted(total, key=lambda t: -total[t])}


def flamegraph(stacks: list[tuple[list[str], int]], title: str, out: Path, width: int = 1400) -> None:
    """A minimal SVG flame graph (root at the bottom) from collapsed stacks."""
    root: dict = {"n": 0, "kids": {}}
    for frames, k in stacks:
        node = root
        node["n"] += k
        for f in frames:
            node = node["kids"].setdefault(_frame(f), {"n": 0, "kids": {}})
            node["n"] += k
    depth_of = lambda node: 1 + max((depth_of(c) for c in node["kids"].values()), default=0)  # noqa: E731
    row, depth = 16, depth_of(root)
    height = row * depth + 40
    rects: list[str] = []

    def draw(node: dict, name: str, x: float, level: int) -> None:
        w = width * node["n"] / max(root["n"], 1)
        if w < 0.5:
            return
        y = height - (level + 1) * row - 10
        hue = 20 + (hash(name) % 40)
        label = html.escape(name if w > 7 * len(name) else name[: max(0, int(w / 7) - 1)])
        rects.append(f'<g><title>{html.escape(name)} ({node["n"]} samples, {100 * node["n"] / root["n"]:.1f}%)</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
                     f'<text x="{x + 2:.1f}" y="{y + row - 4}" font-size="11">{label}</text></g>')
        cx = x
        for child_name, child in sorted(node["kids"].items()):
            draw(child, child_name, cx, level + 1)
            cx += width * child["n"] / root["n"]

    draw(root, f"all ({root['n']} samples)", 0, 0)
    out.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace">'
                   f'<text x="4" y="16" font-size="13">{html.escape(title)}</text>{"".join(rects)}</svg>\n')


# --------------------------------------------------------------------------- time line


def trace_events(log_file: Path) -> list[tuple[float, str, dict[str, str]]]:
    """The ``ocifs.trace`` events of a daemon log: (seconds, name, fields)."""
    out = []
    for line in log_file.read_text(errors="replace").splitlines():
        _, sep, rest = line.partition(" ocifs.trace: ")
        if not sep:
            continue
        t, name, *kv = rest.split(" ")
        out.append((float(t), name, dict(x.split("=", 1) for x in kv if "=" in x)))
    return out


def in_flight(events: list[tuple[float, str, dict]], start: str, done: str) -> list[tuple[float, int]]:
    level, steps = 0, []
    for t, name, _ in events:
        if name in (start, done):
            level += 1 if name == start else -1
            steps.append((t, level))
    return steps


def push_timeline(events: list[tuple[float, str, dict]], size: int) -> dict:
    """The push in numbers, from its trace events (times relative to the blob's first event)."""
    t0 = min((e[0] for e in events if e[1] == "create_start"), default=events[0][0] if events else 0.0)
    queued = [(t - t0, int(f["end"])) for t, n, f in events if n == "part_queued" and f.get("commit") == "0"]
    steps = in_flight(events, "part_slot", "part_done")
    area, last, level = 0.0, None, 0
    hist: collections.Counter[int] = collections.Counter()
    for t, lv in steps:
        if last is not None:
            area += level * (t - last)
            hist[level] += t - last
        last, level = t, lv
    span = (steps[-1][0] - steps[0][0]) if steps else 0.0
    waits = [float(f["seconds"]) for _, n, f in events if n == "writer_wait"]
    commit = [t for t, n, f in events if n == "commit_start" and int(f.get("size", 0)) == size]
    done = [t for t, n, f in events if n == "complete_done"]
    last_write = queued[-1][0] + t0 if queued else None
    return {
        "first_part_after_create_s": round(queued[0][0], 3) if queued else None,
        "parts_streamed": len(queued), "parts_at_commit": sum(1 for _, n, f in events if n == "part_queued" and f.get("commit") == "1"),
        "client_write_mibps": round((queued[-1][1] - queued[0][1]) / MiB / (queued[-1][0] - queued[0][0]), 1) if len(queued) > 1 else None,
        "mean_parts_in_flight": round(area / span, 2) if span else None,
        "seconds_by_parts_in_flight": {k: round(v, 2) for k, v in sorted(hist.items())},
        "writer_waits": len(waits), "writer_wait_s": round(sum(waits), 3),
        "close_s": round(max(done) - commit[-1], 3) if commit and done else None,
        "last_part_queued_to_commit_s": round(commit[-1] - last_write, 3) if commit and last_write else None,
    }


def plot(push_ev: list, pull_ev: list, size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.5), dpi=90)
    if push_ev:
        t0 = push_ev[0][0]
        steps = in_flight(push_ev, "part_slot", "part_done")
        a1.step([t - t0 for t, _ in steps], [lv for _, lv in steps], where="post", label="parts in flight")
        q = [(t - t0, int(f["end"]) / MiB) for t, n, f in push_ev if n == "part_queued" and f.get("commit") == "0"]
        ax = a1.twinx()
        ax.plot([x for x, _ in q], [y for _, y in q], "g.", markersize=3, label="written by oras (MiB)")
        ax.set_ylabel("MiB written", color="g")
        for t, n, f in push_ev:
            if n == "commit_start" and int(f.get("size", 0)) == size:
                a1.axvline(t - t0, color="r", linestyle="--", label="close (commit) starts")
            if n == "complete_done":
                a1.axvline(t - t0, color="k", linestyle=":", label="CompleteMultipartUpload done")
        a1.set_title(f"push of one {_name(size)} blob: parts in flight and client progress")
        a1.set_xlabel("seconds")
        a1.legend(loc="upper left", fontsize=8)
    if pull_ev:
        t0 = pull_ev[0][0]
        steps = in_flight(pull_ev, "get_start", "get_done")
        a2.step([t - t0 for t, _ in steps], [lv for _, lv in steps], where="post", label="GETs in flight")
        w = [(t - t0, float(f["seconds"])) for t, n, f in pull_ev if n == "reader_wait"]
        ax = a2.twinx()
        ax.plot([x for x, _ in w], [y * 1000 for _, y in w], "r.", markersize=4, label="a read waited (ms)")
        ax.set_ylabel("read waited for S3 (ms)", color="r")
        a2.set_title("cold pull of the same blob: chunk GETs in flight, reads that waited")
        a2.set_xlabel("seconds")
        a2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.anatomy", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cloud", choices=sorted(PROFILES))
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--variant", default="now=.", metavar="NAME=REV[,ENV=V][,--flag=v]")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too: pyfuse3, hashlib, awscrt)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    v = Variant.parse(a.variant)
    out = a.out or RESULTS / f"anatomy-{a.profile}-{dt.datetime.now():%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    CLEANUP.install()
    work = make_workdir("ocifs-anatomy-")
    v.prepare(work)
    lab = Lab.start(a.profile, work)
    home = work / "home"
    home.mkdir()
    blobs = Blobs(a.size, 1).make(work)
    repo = "anatomy"
    res: dict = {"profile": a.profile, "variant": v.name, "commit": v.commit, "size": a.size,
                 "started": dt.datetime.now().isoformat(timespec="seconds")}
    try:
        m = v.mount(lab, work / "m-push", ["--log-level", "debug"])
        with Spy(m.pid, out / "push.folded", a.native):
            res["push"] = push(lab, m, blobs, repo, home)
        push_ev = trace_events(m.log_file)
        CLEANUP.pop_run(m.teardown)
        m = v.mount(lab, work / "m-pull", ["--log-level", "debug"])
        with Spy(m.pid, out / "pull.folded", a.native):
            res["pull-cold"] = pull_cold(lab, m, blobs, repo, home)
        pull_ev = trace_events(m.log_file)
        CLEANUP.pop_run(m.teardown)
    finally:
        cleanup(lab, repo)
        CLEANUP.run_all()
    res["push_timeline"] = push_timeline(push_ev, a.size)
    res["loadavg_at_end"] = __import__("os").getloadavg()
    plot(push_ev, pull_ev, a.size, out / "timeline.png")
    report = [f"# Anatomy of one {_name(a.size)} push and cold pull (profile `{a.profile}`, ocifs {v.commit})\n",
              f"`python -m bench.anatomy {' '.join(argv or __import__('sys').argv[1:])}`; load average at end "
              f"{res['loadavg_at_end'][0]:.1f} (shared box: wall times drift, CPU per GiB much less).\n"]
    for step in ("push", "pull-cold"):
        r = res[step]
        c = r["cpu_s_per_gib"]
        gib = a.size / (1 << 30)
        threads = ", ".join(f"{t} {s / gib:.2f}" for t, s in sorted(r["daemon_threads"].items(), key=lambda kv: -kv[1]))
        report.append(f"## {step}: {r['seconds']:.2f} s ({r['mibps']:.0f} MiB/s)\n")
        report.append(f"CPU seconds per GiB: oras {c['client']:.2f}, daemon {c['daemon']:.2f} ({threads}), "
                      f"MinIO + toxiproxy {c['server']:.2f}.\n")
        stacks = folded(out / ("push.folded" if step == "push" else "pull.folded"))
        flamegraph(stacks, f"ocifs daemon, {step} of {_name(a.size)} ({a.profile}), py-spy {SAMPLE_RATE} Hz, on-CPU samples",
                   out / ("push.svg" if step == "push" else "pull.svg"))
        for thread, rows in list(top_by_thread(stacks).items())[:4]:
            report.append(f"Thread `{thread}`, top functions by own samples (own % / inclusive % of that thread):\n")
            report.extend(f"- {f}: {s:.1f} / {i:.1f}" for f, s, i in rows[:8])
            report.append("")
    report.append("## Push time line\n")
    report.extend(f"- {k}: {val}" for k, val in res["push_timeline"].items())
    report.append("\n![time line](timeline.png)\n")
    (out / "anatomy.md").write_text("\n".join(report) + "\n")
    (out / "anatomy.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    print("\n".join(report))
    log(f"[anatomy] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
