"""tag-storm in virtual time: the index.json protocol alone, without the CPU of a small box.

The real tag-storm (:mod:`bench.tagstorm`) runs oras, MinIO and every mount daemon on one
machine; on a 2-core box its tags/s is bounded by CPU long before the index.json protocol is.
This runs the same storm through ocifs's FUSE operations (kernel-free, tests/fsrig.py) on
N mounts of one FakeS3 (tests/fakes3.py) with a fixed latency per S3 request, on trio's
MockClock: time passes only in S3 requests and in the writers' think time, so the numbers
show how the protocol scales with mounts and writers (contention, batching, fairness), and
nothing else. It is a model, not a measurement of ocifs's speed: CPU costs nothing here.

Each writer does what ``oras push --oci-layout`` does to index.json (read it, then rewrite it
twice: the manifest untagged, then tagged), ``--pushes`` times, with a random think time
between pushes (the blobs). Builds as in bench.tagstorm (``--build LABEL=REV``).

    python -m bench.tagstorm_sim --mounts 8,16 --writers 100 --build before=main --build after=worktree
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import CLEANUP, REPO, log, make_workdir
from bench.tagstorm import ints, prepare_build, quantile

REF = "org.opencontainers.image.ref.name"
IDX = "repo/index.json"


def _desc(name: str, tag: str | None = None) -> dict:
    import hashlib

    d: dict = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
               "digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(), "size": 1}
    if tag is not None:
        d["annotations"] = {REF: tag}
    return d


def _index(descs: list[dict]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": descs}).encode()


def simulate(mounts: int, writers: int, pushes: int, latency: float, think: float, seed: int) -> dict:
    """One storm; returns tags/s (virtual), failures, kept tags and push times."""
    sys.path.insert(0, str(REPO / "tests"))
    import pyfuse3
    import trio
    import trio.testing
    from fakes3 import FakeS3
    from fsrig import Rig, run_mounts

    random.seed(seed)
    s3 = FakeS3()
    for op in ("PutObject", "GetObject", "HeadObject", "ListObjectsV2"):
        s3.delay(op, latency)
    out: dict = {}

    async def storm(rigs: list[Rig]) -> None:
        await rigs[0].mkdir("repo")
        await rigs[0].write_file(IDX, _index([_desc("v0", "v0")]))
        took: list[float] = []
        failed: list[str] = []

        async def writer(r: Rig, pid: int, name: str) -> None:
            for k in range(pushes):
                await trio.sleep(random.uniform(0, think))
                tag = f"{name}-{k}"
                t0 = trio.current_time()
                try:
                    seen = json.loads(await r.read_file(IDX, pid=pid))["manifests"]
                    await r.write_file(IDX, _index([*seen, _desc(tag)]), pid=pid)
                    await r.write_file(IDX, _index([*seen, _desc(tag, tag)]), pid=pid)
                except pyfuse3.FUSEError:
                    failed.append(tag)
                    continue
                took.append(trio.current_time() - t0)

        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            for w in range(writers):
                n.start_soon(writer, rigs[w % mounts], 1000 + w, f"w{w}")
        wall = trio.current_time() - t0
        final = json.loads(s3.objects[IDX].data)["manifests"]
        tags = [(d.get("annotations") or {}).get(REF) for d in final]
        ok = writers * pushes - len(failed)
        out.update(
            tags_per_s=round(ok / wall, 1), failed=len(failed), ok=ok,
            kept=len({t for t in tags if t and t != "v0"} - set(failed)),
            valid=None not in tags and len(tags) == len(set(tags)) and "v0" in tags,
            puts=sum(1 for c in s3.calls if c.op == "PutObject" and c.key == IDX),
            # lost races: each mount counts its own (older builds counted in the shared store's stats)
            merges=int(sum(r.ops.publisher.stats["index.merges"] for r in rigs) if hasattr(rigs[0].ops.publisher, "stats")
                       else s3.stats["index.merges"]),
            push_p50_s=quantile(took, 0.5), push_p95_s=quantile(took, 0.95), push_max_s=max(took, default=None),
        )

    with tempfile.TemporaryDirectory() as d:
        run_mounts(storm, Path(d), mounts, s3, clock=trio.testing.MockClock(autojump_threshold=0))
    return out


def table(recs: list[dict], latency: float) -> str:
    head = (f"| build | mounts | writers | pushes | tags/s (virtual, {latency * 1000:.0f} ms per request) | failed | kept | valid "
            "| index.json PUTs (lost races) | push p50 / p95 / max s |\n|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    rows = [
        f"| {r['build']} | {r['mounts']} | {r['writers']} | {r['ok'] + r['failed']} | {r['tags_per_s']} | {r['failed']} "
        f"| {r['kept']}/{r['ok']} | {'yes' if r['valid'] else '**no**'} | {r['puts']} ({r['merges']}) "
        f"| {r['push_p50_s']:.2f} / {r['push_p95_s']:.2f} / {r['push_max_s']:.2f} |"
        for r in sorted(recs, key=lambda r: (r["build"], r["mounts"], r["writers"], r["seed"]))
    ]
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tagstorm_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--mounts", default="8,16")
    p.add_argument("--writers", default="100")
    p.add_argument("--pushes", type=int, default=3, help="pushes per writer (default 3)")
    p.add_argument("--latency", type=float, default=0.025, help="seconds per S3 request (default 0.025)")
    p.add_argument("--think", type=float, default=0.2, help="longest think time between a writer's pushes (s)")
    p.add_argument("--seeds", default="1", help="random seeds, comma-separated (one run each)")
    p.add_argument("--build", action="append", default=[], metavar="LABEL=REV")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one cell in this process, print JSON
    a = p.parse_args(argv)
    if a.one:
        m, w, seed = ints(a.one)
        print(json.dumps(simulate(m, w, a.pushes, a.latency, a.think, seed)))
        return 0
    CLEANUP.install()
    try:
        work = make_workdir("ocifs-tagstorm-sim-")
        builds = [prepare_build(s, work) for s in (a.build or ["this=worktree"])]
        recs = []
        for m in ints(a.mounts):
            for w in ints(a.writers):
                for seed in ints(a.seeds):
                    for b in builds:  # each build in its own process: its ocifs package first on the path
                        env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys([str(b.src), str(REPO)])))
                        res = subprocess.run([sys.executable, "-P", "-m", "bench.tagstorm_sim", "--one", f"{m},{w},{seed}",
                                              "--pushes", str(a.pushes), "--latency", str(a.latency), "--think", str(a.think)],
                                             env=env, capture_output=True, text=True, timeout=3600)
                        if res.returncode != 0:
                            raise SystemExit(f"{b.label} m={m} w={w}: {res.stderr[-2000:]}")
                        rec = json.loads(res.stdout.splitlines()[-1]) | {"build": b.label, "commit": b.commit, "mounts": m,
                                                                         "writers": w, "seed": seed}
                        log(f"[tag-storm-sim] {json.dumps(rec)}")
                        recs.append(rec)
        cmd = "python -m bench.tagstorm_sim " + " ".join(argv if argv is not None else sys.argv[1:])
        print(f"`{cmd}`\n\n" + table(recs, a.latency))
        return 0
    finally:
        CLEANUP.run_all()


if __name__ == "__main__":
    sys.exit(main())
