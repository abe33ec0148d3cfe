"""What does zero-copy blob commit buy? ``oras push`` of one blob, with and without it.

Same MinIO, same run, interleaved repetitions. With zero-copy (the default) ocifs streams the
oras ingest file straight to ``blobs/sha256/<hex>`` and the rename completes the upload; with
``--no-zero-copy`` it uploads ``ingest/<hex>_N`` and the rename is a server-side CopyObject +
DeleteObject, which is what every generic S3 filesystem does. Reports wall time, MiB/s, and the
S3 requests and bytes ocifs sent (from its own counters).

    python -m bench.zero_copy [--size 1G] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import CLEANUP, MiB, OcifsMount, boto_client, log, make_workdir, median, start_minio, tool
from bench.mount_vs_raw import parse_size
from ocifs import metrics


def counters(mnt: Path, env: dict) -> dict[str, float]:
    out = subprocess.run([tool("ocifs") or "ocifs", "stats", str(mnt)], env=env, capture_output=True, text=True, timeout=30).stdout
    return metrics.parse(out)


def one_push(workdir: Path, ep, bucket: str, blob: Path, zero_copy: bool, rep: int) -> dict:
    name = f"{'zc' if zero_copy else 'copy'}-{rep}-{uuid.uuid4().hex[:6]}"
    m = OcifsMount(workdir / f"mnt-{name}", workdir / f"cache-{name}", workdir / f"{name}.log", ep, f"s3://{bucket}",
                   [] if zero_copy else ["--no-zero-copy"])
    m.mount()
    try:
        env = ep.env()
        before = counters(m.path, env)
        t0 = time.perf_counter()
        subprocess.run([tool("oras") or "oras", "push", "--oci-layout", f"{m.path}/{name}:v1", blob.name],
                       cwd=blob.parent, env=dict(env, HOME=str(workdir)), check=True, capture_output=True, timeout=1800)
        seconds = time.perf_counter() - t0
        after = counters(m.path, env)
    finally:
        m.umount()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "zero_copy": zero_copy,
        "seconds": seconds,
        "mibps": blob.stat().st_size / MiB / seconds,
        "copy_requests": delta.get('ocifs_s3_requests_total{op="CopyObject"}', 0),
        "bytes_sent": delta.get('ocifs_s3_bytes_total{direction="out"}', 0),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.zero_copy", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G", help="blob size (default 1G)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    size = parse_size(a.size)
    CLEANUP.install()
    try:
        workdir = make_workdir("ocifs-bench-zc-")
        minio = start_minio(workdir)
        ep = minio.endpoint
        bucket = "zc-" + uuid.uuid4().hex[:8]
        boto_client(ep).create_bucket(Bucket=bucket)
        blob = workdir / "src" / "blob.bin"
        blob.parent.mkdir()
        with open(blob, "wb") as f:
            block = os.urandom(MiB)
            for i in range(size // MiB):
                f.write(i.to_bytes(8, "little") + block[8:])
        runs = []
        for rep in range(a.repeat):
            for zc in (True, False):
                r = one_push(workdir, ep, bucket, blob, zc, rep)
                log(f"[zero-copy={r['zero_copy']}] rep {rep}: {r['seconds']:.2f} s, {r['mibps']:.0f} MiB/s, "
                    f"CopyObject {r['copy_requests']:.0f}, sent {r['bytes_sent'] / MiB:.0f} MiB")
                runs.append(r)
        zc = [r for r in runs if r["zero_copy"]]
        cp = [r for r in runs if not r["zero_copy"]]
        ratios = [c["seconds"] / z["seconds"] for z, c in zip(zc, cp)]
        print(f"oras push --oci-layout of a {size // MiB} MiB blob, {a.repeat} interleaved repetitions, MinIO on 127.0.0.1")
        print(f"{'mode':<22}{'median s':>10}{'min-max s':>16}{'MiB/s':>8}{'CopyObject':>12}{'MiB sent':>10}")
        for label, rs in (("zero-copy (default)", zc), ("--no-zero-copy", cp)):
            secs = [r["seconds"] for r in rs]
            print(f"{label:<22}{median(secs):>10.2f}{min(secs):>8.2f}-{max(secs):<7.2f}{size / MiB / median(secs):>8.0f}"
                  f"{median([r['copy_requests'] for r in rs]):>12.0f}{median([r['bytes_sent'] for r in rs]) / MiB:>10.0f}")
        print(f"time with copy / time with zero-copy, pair by pair: median {median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
        print(json.dumps({"bench": "zero_copy", "size_bytes": size, "runs": runs, "ratio_median": median(ratios)}))
        return 0
    finally:
        CLEANUP.run_all()


if __name__ == "__main__":
    sys.exit(main())
