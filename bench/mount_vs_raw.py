"""How close does an ocifs mount get to the raw S3 API on the same endpoint?

One run, one S3 endpoint (a MinIO this script starts on 127.0.0.1, or ``--endpoint-url`` with
``--bucket`` and the usual AWS_* credentials), ``--repeat`` interleaved repetitions of:

* mount write: sequential 1 MiB ``os.write`` calls into a new file on a fresh ocifs mount,
  then ``fsync`` and ``close``; timed from open until close returns (ocifs publishes on close).
* mount read (cold): a FRESH mount (new daemon, empty cache dir) after drop_caches; 1 MiB
  ``readinto`` calls to EOF, every byte checked.
* raw write: aiobotocore multipart upload, ``--part-size`` parts, ``--concurrency`` in flight.
* raw read: aiobotocore ranged GETs of ``--part-size``, ``--concurrency`` in flight, checked.
  Raw transfers are timed once their client is warm (created, one request done), as a mounted
  daemon's client is; the mount side includes open() and close().

The mount runs with the same ``--concurrency``, ``--part-size`` and ``--chunk-size`` =
part size. Prints a table and one JSON line (``{"bench": "mount_vs_raw", ...}``).

    python -m bench.mount_vs_raw [--size 1G] [--repeat 3] [--concurrency 16] [--part-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

from bench import raw
from bench.common import (
    CLEANUP, MiB, Endpoint, OcifsMount, boto_client, delete_prefix, drop_caches, log,
    make_workdir, median, peak_rss_bytes, proc_cpu_seconds, self_cpu_seconds, start_minio,
)
from bench.data import BLOCK, Pattern


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t) * MiB  # bare number = MiB


def mount_write(m: OcifsMount, rel: str, size: int, pattern: Pattern) -> dict:
    path = m.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = m.pid
    cpu0, dcpu0 = self_cpu_seconds(), proc_cpu_seconds(pid)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        i, left = 0, size
        while left > 0:
            b = pattern.block(i)
            chunk = b if left >= BLOCK else memoryview(b)[:left]
            n = os.write(fd, chunk)
            if n != len(chunk):
                raise OSError(f"short write {n} of {len(chunk)}")
            left -= n
            i += 1
        t_written = time.perf_counter()
        os.fsync(fd)
    finally:
        os.close(fd)
    t1 = time.perf_counter()
    dcpu1 = proc_cpu_seconds(pid)
    return {
        "seconds": t1 - t0, "bytes": size, "ok": True,
        "write_calls_seconds": t_written - t0, "fsync_close_seconds": t1 - t_written,
        "client_cpu_s": self_cpu_seconds() - cpu0,
        "daemon_cpu_s": None if dcpu0 is None or dcpu1 is None else dcpu1 - dcpu0,
        "daemon_peak_rss_bytes": peak_rss_bytes(pid),
    }


def mount_read(m: OcifsMount, rel: str, size: int, pattern: Pattern) -> dict:
    path = m.path / rel
    pid = m.pid
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    cpu0, dcpu0 = self_cpu_seconds(), proc_cpu_seconds(pid)
    t0 = time.perf_counter()
    ttfb = None
    ok, total, off = True, 0, 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            # readinto may return a short count; keep block alignment for the check
            while n < BLOCK:
                k = f.readinto(mv[n:])
                if not k:
                    break
                n += k
            if ok and not pattern.check(buf, off, n):
                ok = False
            total += n
            off += n
    t1 = time.perf_counter()
    dcpu1 = proc_cpu_seconds(pid)
    return {
        "seconds": t1 - t0, "bytes": total, "ok": ok and total == size,
        "detail": "" if ok and total == size else f"read {total} of {size} bytes, content ok={ok}",
        "ttfb_s": ttfb,
        "client_cpu_s": self_cpu_seconds() - cpu0,
        "daemon_cpu_s": None if dcpu0 is None or dcpu1 is None else dcpu1 - dcpu0,
        "daemon_peak_rss_bytes": peak_rss_bytes(pid),
    }


def raw_write(ep, bucket, key, size, args, pattern) -> dict:
    cpu0 = self_cpu_seconds()
    t = raw.upload_pattern(ep, bucket, key, size, args.part_size * MiB, args.concurrency, pattern)
    return {"seconds": t.seconds, "bytes": t.bytes, "ok": t.ok, "client_cpu_s": self_cpu_seconds() - cpu0}


def raw_read(ep, bucket, key, args, pattern) -> dict:
    cpu0 = self_cpu_seconds()
    t = raw.download_pattern(ep, bucket, key, args.part_size * MiB, args.concurrency, pattern)
    return {"seconds": t.seconds, "bytes": t.bytes, "ok": t.ok, "detail": t.detail,
            "client_cpu_s": self_cpu_seconds() - cpu0}


def mibps(r: dict) -> float:
    return r["bytes"] / MiB / r["seconds"] if r["seconds"] > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mount_vs_raw", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=1024 * MiB, help="file size, e.g. 1G, 256M (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight, mount and raw (default 16)")
    p.add_argument("--part-size", type=int, default=8, help="MiB per part / ranged GET, mount and raw (default 8)")
    p.add_argument("--endpoint-url", default=None, help="use this S3 instead of a private MinIO (needs --bucket, AWS_* env)")
    p.add_argument("--bucket", default=None, help="bucket on --endpoint-url (a unique prefix is used and deleted)")
    p.add_argument("--ocifs-arg", action="append", default=[], help="extra argument for `ocifs mount` (repeatable)")
    p.add_argument("--output", type=Path, default=None, help="also write the table and JSON line here")
    args = p.parse_args(argv)
    if args.part_size < 5:
        p.error("--part-size must be at least 5 (S3 minimum)")
    if args.size % BLOCK:
        p.error("--size must be a multiple of 1 MiB")

    CLEANUP.install()
    work = make_workdir("ocifs-bench-mvr-")
    if args.endpoint_url:
        if not args.bucket:
            p.error("--endpoint-url needs --bucket")
        ep = Endpoint(args.endpoint_url, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                      region=os.environ.get("AWS_REGION", "us-east-1"))
        bucket = args.bucket
        prefix = f"ocifs-bench/mvr-{uuid.uuid4().hex[:8]}/"
        where = args.endpoint_url
    else:
        server = start_minio(work)
        ep = server.endpoint
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        prefix = ""
        where = "minio on 127.0.0.1 (private, temp dir)"
    client = boto_client(ep)
    if not args.endpoint_url:
        client.create_bucket(Bucket=bucket)
    CLEANUP.push("bench objects", lambda: delete_prefix(client, bucket, prefix))
    url = f"s3://{bucket}/{prefix.rstrip('/')}" if prefix else f"s3://{bucket}"
    ocifs_args = ["--concurrency", str(args.concurrency), "--part-size", str(args.part_size),
                  "--chunk-size", str(args.part_size), *args.ocifs_arg]
    pattern = Pattern(seed=42)
    size = args.size
    results: dict[str, list[dict]] = {"mount_write": [], "mount_read": [], "raw_write": [], "raw_read": []}
    gen = [0]

    def new_mount() -> OcifsMount:
        gen[0] += 1
        m = OcifsMount(work / f"mnt{gen[0]}", work / f"cache{gen[0]}", work / f"ocifs{gen[0]}.log",
                       ep, url, ocifs_args)
        m.mount()
        return m

    def done(m: OcifsMount) -> None:
        t0 = time.perf_counter()
        m.umount()
        left = time.perf_counter() - t0
        if left > 2:
            log(f"  (umount took {left:.1f} s: writes were still pending after close?)")
        CLEANUP.pop_run(m.teardown)

    failed = False
    load0 = os.getloadavg()
    log(f"[mount_vs_raw] {size / MiB:.0f} MiB x {args.repeat}, concurrency {args.concurrency}, "
        f"part {args.part_size} MiB, endpoint: {where}")
    try:
        for rep in range(args.repeat):
            rel = f"bench/mvr-{rep}.bin"
            key_m = prefix + rel
            key_r = prefix + f"bench/raw-{rep}.bin"
            order = ["mount", "raw"] if rep % 2 == 0 else ["raw", "mount"]
            for side in order:  # writes
                if side == "mount":
                    m = new_mount()
                    r = mount_write(m, rel, size, pattern)
                    done(m)
                    results["mount_write"].append(r)
                else:
                    r = raw_write(ep, bucket, key_r, size, args, pattern)
                    results["raw_write"].append(r)
                log(f"  rep {rep + 1} {side:5s} write {mibps(r):8.1f} MiB/s  ({r['seconds']:.2f} s)")
            for side in order:  # reads
                drop_caches()
                if side == "mount":
                    m = new_mount()
                    r = mount_read(m, rel, size, pattern)
                    done(m)
                    results["mount_read"].append(r)
                else:
                    r = raw_read(ep, bucket, key_m, args, pattern)  # the bytes the mount wrote
                    results["raw_read"].append(r)
                if not r["ok"]:
                    failed = True
                    log(f"  !! {side} read of rep {rep + 1} FAILED verification: {r.get('detail')}")
                log(f"  rep {rep + 1} {side:5s} read  {mibps(r):8.1f} MiB/s  ({r['seconds']:.2f} s)")
            delete_prefix(client, bucket, prefix + "bench/")
    except KeyboardInterrupt:
        log("[mount_vs_raw] interrupted")
        CLEANUP.run_all()
        return 130
    finally:
        CLEANUP.run_all()

    def stats(rs: list[dict]) -> dict:
        v = [mibps(r) for r in rs]
        return {"median_mibps": round(median(v), 1), "min_mibps": round(min(v), 1), "max_mibps": round(max(v), 1),
                "runs_mibps": [round(x, 1) for x in v]}

    s = {k: stats(v) for k, v in results.items()}
    ratio_w = s["mount_write"]["median_mibps"] / s["raw_write"]["median_mibps"]
    ratio_r = s["mount_read"]["median_mibps"] / s["raw_read"]["median_mibps"]

    def cpu(rs, k):
        xs = [r[k] for r in rs if r.get(k) is not None]
        return round(median(xs), 2) if xs else None

    lines = [
        f"mount_vs_raw: {size / MiB:.0f} MiB file, {args.repeat} interleaved repetitions, "
        f"concurrency {args.concurrency}, part/chunk {args.part_size} MiB",
        f"endpoint: {where}; host: {os.cpu_count()} cpus, {platform.release()}, "
        f"loadavg at start {load0[0]:.2f} / at end {os.getloadavg()[0]:.2f} (other users of the box skew this)",
        "",
        f"{'direction':<10} {'mount MiB/s (min-max)':<26} {'raw MiB/s (min-max)':<26} {'mount/raw':>9}  "
        f"{'mount cpu s (client+daemon)':>28}  {'raw cpu s':>9}",
    ]
    for d, ratio in (("write", ratio_w), ("read", ratio_r)):
        ms, rs_ = s[f"mount_{d}"], s[f"raw_{d}"]
        mc = f"{cpu(results[f'mount_{d}'], 'client_cpu_s')}+{cpu(results[f'mount_{d}'], 'daemon_cpu_s')}"
        lines.append(
            f"{d:<10} {ms['median_mibps']:>8.1f} ({ms['min_mibps']:.1f}-{ms['max_mibps']:.1f}){'':<6} "
            f"{rs_['median_mibps']:>8.1f} ({rs_['min_mibps']:.1f}-{rs_['max_mibps']:.1f}){'':<6} "
            f"{ratio:>9.2f}  {mc:>28}  {cpu(results[f'raw_{d}'], 'client_cpu_s'):>9}"
        )
    peak = max((r.get("daemon_peak_rss_bytes") or 0) for r in results["mount_write"] + results["mount_read"])
    lines.append(f"ocifs daemon peak RSS: {peak / MiB:.0f} MiB; every read verified byte for byte: "
                 f"{'yes' if not failed else 'NO - FAILURES ABOVE'}")
    record = {
        "bench": "mount_vs_raw", "size_bytes": size, "repeat": args.repeat, "concurrency": args.concurrency,
        "part_size_mib": args.part_size, "endpoint": where, "loadavg_start": load0[0], **{k: v for k, v in s.items()},
        "ratio_write": round(ratio_w, 3), "ratio_read": round(ratio_r, 3), "verified": not failed,
        "daemon_peak_rss_bytes": peak, "runs": results,
    }
    text = "\n".join(lines) + "\n" + json.dumps(record, sort_keys=True) + "\n"
    sys.stdout.write(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
