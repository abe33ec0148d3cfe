#!/usr/bin/env python3
"""Soak test: faults and load against ocifs for a while, then check nothing was lost or corrupted.

    .venv/bin/python scripts/soak.py [--minutes 5] [--writers 6] [--readers 6]

Starts its own MinIO and toxiproxy-server on 127.0.0.1, mounts a bucket through the proxy
(--op-timeout 20, debug log), and for --minutes runs writers (write, fsync or close, read back)
and readers (whole and ranged reads of known objects) while it injects faults one after the
other: latency, bandwidth collapse, connection resets, responses and uploads cut mid-body,
tiny TCP segments, a silent server, refused connections, and MinIO SIGKILLed and restarted.

Every filesystem call runs in a thread joined with a deadline (op-timeout + margin, times the
number of FUSE operations it makes); one that does not return is a hang. At the end it checks
every object against the bytes its name determines and prints a summary. Exit status 1 if any
must-be-0 counter (hangs, corrupt reads, half-published objects, acknowledged writes lost,
multipart uploads left, daemon crashes) is not 0; 2 if the rig itself failed.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reliability.harness import (  # noqa: E402
    MiB,
    MinioServer,
    Toxiproxy,
    bounded,
    content,
    daemon_pid,
    fd_count,
    get_or_none,
    incomplete_uploads,
    is_mounted,
    lazy_unmount,
    list_keys,
    ocifs_cmd,
    pread,
    read_file,
    rss_mib,
    run,
    s3_env,
    write_file,
)

OP_TIMEOUT = 20
MARGIN = 25
CACHE_MIB = 128
BUCKET = "soak"
WRITE_SIZES = [3000, 200 * 1024 + 1, 1 * MiB + 7, 9 * MiB + 3]
SEED_SIZES = [64 * 1024, 2 * MiB + 1, 8 * MiB, 17 * MiB + 5]


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: collections.Counter[str] = collections.Counter()
        self.errnos: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, name: str, n: int = 1, example: str | None = None) -> None:
        with self.lock:
            self.c[name] += n
            if example and len(self.examples[name]) < 5:
                self.examples[name].append(example)

    def clean_failure(self, op: str, exc: BaseException | None) -> None:
        code = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        with self.lock:
            self.c["ops_failed_cleanly"] += 1
            self.errnos[f"{op}:{code}"] += 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ocifs-soak-"))
        self.minio = MinioServer(self.work / "minio")
        self.toxi = Toxiproxy(self.work / "toxi")
        self.mnt = self.work / "mnt"
        self.cache = self.work / "cache"
        self.log_file = self.work / "ocifs.log"
        self.k = Counters()
        self.stop = threading.Event()
        self.attempted: dict[str, int] = {}  # name -> size of every write attempted
        self.acked: dict[str, int] = {}  # name -> size of writes whose fsync/close returned 0
        self.seeded: dict[str, bytes] = {}
        self.pid = 0
        self.peak_rss = 0.0
        self.peak_fds = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    # --- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.minio.root.mkdir(parents=True, exist_ok=True)
        self.minio.start()
        self.toxi.workdir.mkdir(parents=True, exist_ok=True)
        self.toxi.start()
        self.endpoint = self.toxi.proxy("s3", f"127.0.0.1:{self.minio.port}")
        self.s3 = self.minio.client(attempts=5, read_timeout=60)
        self.s3.create_bucket(Bucket=BUCKET)
        for i in range(8):
            name = f"seed/obj-{i}.bin"
            data = content(name, SEED_SIZES[i % len(SEED_SIZES)])
            self.s3.put_object(Bucket=BUCKET, Key=name, Body=data)
            self.seeded[name] = data
        self.mnt.mkdir()
        self.env = s3_env(self.minio.access_key, self.minio.secret_key)
        res = run([*ocifs_cmd(), "mount", f"s3://{BUCKET}", self.mnt, "--endpoint-url", self.endpoint,
                   "--op-timeout", OP_TIMEOUT, "--cache-size", CACHE_MIB, "--cache-dir", self.cache,
                   "--log-file", self.log_file, "--log-level", "debug"], env=self.env, timeout=60)
        if res.returncode != 0 or not is_mounted(self.mnt):
            raise RuntimeError(f"ocifs mount failed: {res.stderr.strip()}")
        (self.mnt / "w").mkdir()
        self.pid = daemon_pid(self.mnt)
        log(f"MinIO {self.minio.endpoint}, proxy {self.endpoint}, mount {self.mnt}, daemon pid {self.pid}")

    # --- workers ----------------------------------------------------------------------------
    def call(self, op: str, limit: float, fn, *a, **kw):
        self.k.add("ops_attempted")
        o = bounded(fn, limit, *a, **kw)
        if o.status == "hang":
            self.k.add("hangs", example=f"{op} {a[:1]} still running after {limit:.0f}s")
        elif o.status == "error":
            self.k.clean_failure(op, o.error)
        return o

    def writer(self, w: int) -> None:
        rng = random.Random(w)
        i = 0
        while not self.stop.is_set():
            name = f"w/{w}-{i}.bin"
            i += 1
            size = rng.choice(WRITE_SIZES)
            data = content(name, size)
            with self.lock:
                self.attempted[name] = size
            fsync = rng.random() < 0.7
            o = self.call("write", 3 * OP_TIMEOUT + MARGIN, write_file, self.mnt / name, data, fsync)
            if o.status == "hang":
                return  # this thread's file is wedged; don't pile up more
            if o.status != "ok":
                continue
            with self.lock:
                self.acked[name] = size
            r = self.call("readback", OP_TIMEOUT + MARGIN, read_file, self.mnt / name)
            if r.status == "ok" and r.value != data:
                self.k.add("corrupt_reads", example=f"read-back of {name}: {len(r.value)} bytes, expected {size}")
            elif r.status == "hang":
                return

    def reader(self, r: int) -> None:
        rng = random.Random(100 + r)
        names = list(self.seeded)
        while not self.stop.is_set():
            name = rng.choice(names)
            want = self.seeded[name]
            if rng.random() < 0.4:
                o = self.call("read", OP_TIMEOUT + MARGIN, read_file, self.mnt / name)
                expect = want
            else:
                off = rng.randrange(len(want))
                n = rng.choice([4096, 100_000, 1 * MiB, 3 * MiB])
                o = self.call("pread", OP_TIMEOUT + MARGIN, pread, self.mnt / name, off, n)
                expect = want[off : off + n]
            if o.status == "ok" and o.value != expect:
                self.k.add("corrupt_reads", example=f"{name}: got {len(o.value)} bytes, expected {len(expect)}")
            elif o.status == "hang":
                return
            time.sleep(rng.random() * 0.05)

    def sampler(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_mib(self.pid))
                self.peak_fds = max(self.peak_fds, fd_count(self.pid))
            except OSError:
                pass
            time.sleep(0.5)

    # --- faults -----------------------------------------------------------------------------
    def faults_cycle(self, rng: random.Random):
        """(name, inject, undo) in a shuffled order, forever."""
        def toxic(type_, stream, toxicity=1.0, **attrs):
            def inject():
                return self.toxi.add("s3", type_, stream, toxicity, **attrs)

            def undo(t):
                self.toxi.remove("s3", t)

            return inject, undo

        def disable():
            self.toxi.set_enabled("s3", False)

        def enable(_):
            self.toxi.set_enabled("s3", True)

        def kill_minio():
            self.minio.kill()

        def restart_minio(_):
            self.minio.start()

        catalogue = [
            ("latency 300ms", *toxic("latency", "downstream", latency=300, jitter=100)),
            ("upload latency 200ms", *toxic("latency", "upstream", latency=200)),
            ("bandwidth 50KB/s", *toxic("bandwidth", "downstream", rate=50)),
            ("upload bandwidth 100KB/s", *toxic("bandwidth", "upstream", rate=100)),
            ("reset_peer 50%", *toxic("reset_peer", "downstream", 0.5, timeout=300)),
            ("responses cut after 1MiB 50%", *toxic("limit_data", "downstream", 0.5, bytes=1 * MiB)),
            ("uploads cut after 2MiB 50%", *toxic("limit_data", "upstream", 0.5, bytes=2 * MiB)),
            ("slicer", *toxic("slicer", "downstream", average_size=100, size_variation=50, delay=200)),
            ("silent server", *toxic("timeout", "downstream", 0.7, timeout=0)),
            ("connections refused", disable, enable),
            ("minio SIGKILL + restart", kill_minio, restart_minio),
        ]
        while True:
            rng.shuffle(catalogue)
            yield from catalogue

    def run(self) -> None:
        rng = random.Random(42)
        threads = [threading.Thread(target=self.writer, args=(i,), daemon=True, name=f"writer-{i}")
                   for i in range(self.args.writers)]
        threads += [threading.Thread(target=self.reader, args=(i,), daemon=True, name=f"reader-{i}")
                    for i in range(self.args.readers)]
        threads.append(threading.Thread(target=self.sampler, daemon=True))
        for t in threads:
            t.start()
        end = time.monotonic() + self.args.minutes * 60
        faults = self.faults_cycle(rng)
        while time.monotonic() < end - 10:
            name, inject, undo = next(faults)
            hold = rng.uniform(3, 10)
            log(f"fault: {name} for {hold:.0f}s   ({self.k.c['ops_attempted']} ops, "
                f"{self.k.c['ops_failed_cleanly']} clean failures, {len(self.acked)} acked writes)")
            token = inject()
            self.faults[name] += 1
            time.sleep(hold)
            undo(token)
            time.sleep(rng.uniform(3, 6))  # recovery window: the mount should work again
        time.sleep(max(0.0, end - time.monotonic()))
        self.stop.set()
        deadline = time.monotonic() + 3 * OP_TIMEOUT + 2 * MARGIN
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.k.add("hangs", len(stuck), example=f"threads never came back: {stuck}")

    # --- verification -----------------------------------------------------------------------
    def verify(self) -> None:
        self.toxi.set_enabled("s3", True)
        self.toxi.clear("s3")
        if self.minio.proc is None or self.minio.proc.poll() is not None:
            self.minio.start()
        # the daemon is alive and the mount answers
        alive = os.path.exists(f"/proc/{self.pid}") and is_mounted(self.mnt)
        if not alive:
            self.k.add("daemon_crashes", example="daemon gone or mount lost at the end")
        # multipart uploads: every file is closed now; aborted ones must disappear
        deadline = time.monotonic() + 60
        left = incomplete_uploads(self.s3, BUCKET)
        while left and time.monotonic() < deadline:
            time.sleep(2)
            left = incomplete_uploads(self.s3, BUCKET)
        if left:
            self.k.add("multipart_uploads_left", len(left), example=str(left[:3]))
        keys = set(list_keys(self.s3, BUCKET, "w/"))
        for name, size in sorted(self.attempted.items()):
            want = content(name, size)
            got = get_or_none(self.s3, BUCKET, name) if name in keys else None
            if name in self.acked:
                if got != want:
                    what = "missing" if got is None else f"{len(got)} bytes, expected {size}"
                    self.k.add("acked_writes_lost", example=f"{name}: {what}")
            elif got is not None and got != want:
                self.k.add("half_published", example=f"{name}: {len(got)} bytes, expected {size} or nothing")
        for key in keys - set(self.attempted) - {"w/"}:
            self.k.add("half_published", example=f"unexpected key {key}")
        # and the mount still reads and writes
        data = content("final-check", 2 * MiB)
        o = bounded(write_file, 3 * OP_TIMEOUT, self.mnt / "w" / "final.bin", data)
        r = bounded(read_file, OP_TIMEOUT + MARGIN, self.mnt / "seed" / "obj-3.bin")
        if o.status != "ok" or r.status != "ok" or r.value != self.seeded["seed/obj-3.bin"]:
            self.k.add("mount_broken_after", example=f"final write {o!r}, read {r!r}")
        text = self.log_file.read_text(errors="replace")
        self.tracebacks = text.count("Traceback")
        self.op_timeouts = text.count("gave up after")
        self.secrets = sum(text.count(s) for s in (self.minio.secret_key, "Signature=", "Authorization"))

    def teardown(self) -> None:
        if is_mounted(self.mnt):
            try:
                run([*ocifs_cmd(), "umount", self.mnt], env=self.env, timeout=300)
            except Exception as e:
                log(f"ocifs umount failed: {e}")
            lazy_unmount(self.mnt)
        self.toxi.stop()
        self.minio.stop()

    def summary(self) -> int:
        c = self.k.c
        must_be_zero = ["hangs", "corrupt_reads", "half_published", "acked_writes_lost",
                        "multipart_uploads_left", "daemon_crashes", "mount_broken_after"]
        lines = [
            "",
            "=== ocifs soak summary ===",
            f"duration                    {self.args.minutes:g} min, {self.args.writers} writers, {self.args.readers} readers",
            f"faults injected             {sum(self.faults.values())}  ({', '.join(f'{k} x{v}' for k, v in sorted(self.faults.items()))})",
            f"operations attempted        {c['ops_attempted']}",
            f"writes acknowledged         {len(self.acked)} of {len(self.attempted)} attempted",
            f"failed cleanly (errno)      {c['ops_failed_cleanly']}  ({', '.join(f'{k} x{v}' for k, v in self.k.errnos.most_common())})",
            f"daemon op-timeouts logged   {self.op_timeouts}",
            f"tracebacks in daemon log    {self.tracebacks}",
            f"secrets in daemon log       {self.secrets}",
            f"daemon peak RSS             {self.peak_rss:.0f} MiB (--cache-size {CACHE_MIB})",
            f"daemon peak open fds        {self.peak_fds}",
            "--- must be 0 ---",
        ]
        for name in must_be_zero:
            lines.append(f"{name:<27} {c[name]}")
            for ex in self.k.examples.get(name, []):
                lines.append(f"    e.g. {ex}")
        bad = [n for n in must_be_zero if c[n]]
        lines.append(f"RESULT: {'FAIL (' + ', '.join(bad) + ')' if bad else 'PASS'}")
        lines.append(f"daemon log: {self.log_file}" if self.args.keep or bad else "")
        print("\n".join(lines), flush=True)
        return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--writers", type=int, default=6)
    p.add_argument("--readers", type=int, default=6)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, MinIO data)")
    args = p.parse_args()
    os.environ["PATH"] = f"{Path(__file__).resolve().parents[1] / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"
    soak = Soak(args)
    status = 2
    try:
        soak.setup()
        soak.run()
        soak.verify()
        status = soak.summary()
    except Exception as e:
        log(f"soak rig failed: {type(e).__name__}: {e}")
    finally:
        soak.stop.set()
        soak.teardown()
        if status == 0 and not args.keep:
            shutil.rmtree(soak.work, ignore_errors=True)
        else:
            # keep the logs for whoever investigates; MinIO data is large and not needed
            shutil.rmtree(soak.minio.data, ignore_errors=True)
            print(f"kept {soak.work} (ocifs.log, minio/minio.log)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
