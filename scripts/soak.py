#!/usr/bin/env python3
"""Soak test: faults and load against ocifs for a while, then check nothing was lost or corrupted.

    .venv/bin/python scripts/soak.py [--minutes 5] [--writers 6] [--readers 6] [--op-timeout 20]

Starts its own MinIO and toxiproxy-server on 127.0.0.1 and mounts one bucket three times through
the proxy (debug logs): ``main`` with ``-o allow_other``, and ``a`` and ``b`` for oras. For
--minutes it runs, all at once:

* writers (write, fsync or close, read back) and readers (whole and ranged reads of known
  objects) on ``main``;
* two oras pushers, one per mount ``a``/``b``, pushing images into one layout that share
  layers from a small pool (oras skips blobs that exist: reused, possibly condemned blobs),
  untagging their older images and re-tagging an untagged one now and then;
* ``ocifs gc --grace G`` in a loop (G = 4 x --op-timeout + 10 s: a push may take 3 x
  --op-timeout, and gc is safe while every push finishes within the grace);
* user ``nobody`` trying to change root's files on ``main`` (write, truncate, unlink, rename,
  chmod, chown, utimes, create, mkdir, rmdir, links, and the layout's index.json and blobs);
* faults, one after the other: latency, bandwidth collapse, connection resets, responses and
  uploads cut mid-body, tiny TCP segments, a silent server, refused connections, MinIO
  SIGKILLed and restarted, and MinIO frozen (SIGSTOP) for longer than --op-timeout while reads
  and writes are in flight, then SIGCONT.

Every filesystem call runs in a thread joined with a deadline (op-timeout + margin, times the
number of FUSE operations it makes); one that does not return is a hang, as is a command (oras,
gc, the other user's probe) that outlives its deadline. The load on ``main`` runs in a child
process: FUSE sends a flush for every close of a descriptor, including the close-on-exec of a
forked child's inherited copies (ocifs then publishes the writer's unfinished file), so the
process that forks oras, gc and MinIO holds no file of a mount open. At the end it checks every
object against the bytes its name determines, the layout's tags against the pushes and tags
that succeeded, the other user's targets in S3, runs ``ocifs fsck`` (dangling references,
invalid indexes, corrupt blobs), unmounts, counts ``Traceback`` lines (and Python's reports of
ignored exceptions and destroyed pending tasks) in the daemon logs and the CLI's output, and
prints a summary. Exit status 1 if any must-be-0 counter is not 0; 2 if the rig itself failed.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test rig, testkit/

from testkit import (  # noqa: E402
    TOOLS,
    VENV_BIN,
    CommandTimeout,
    MinioServer,
    OcifsMount,
    Result,
    RigError,
    Toxiproxy,
    alive,
    get_or_none,
    incomplete_uploads,
    is_mounted,
    list_keys,
    ocifs_cmd,
    require_tool,
    run,
    s3_env,
)
from testkit.fsops import MiB, bounded, content, pread, read_file, write_file  # noqa: E402
from testkit.procs import fd_count, rss_mib  # noqa: E402

MARGIN = 25
CACHE_MIB = 128
BUCKET = "soak"
WRITE_SIZES = [3000, 200 * 1024 + 1, 1 * MiB + 7, 9 * MiB + 3]
SEED_SIZES = [64 * 1024, 2 * MiB + 1, 8 * MiB, 17 * MiB + 5]
LAYOUT = "apps/app"
SYSTEM_PYTHON = "/usr/bin/python3"  # what `nobody` runs (the venv lives under /root)
MUST_BE_ZERO = ["hangs", "mount_deaths", "corrupt_reads", "half_published", "acked_writes_lost",
                "multipart_uploads_left", "dangling_references", "unauthorized_changes", "tracebacks"]
NOISE = ("Traceback", "Exception ignored in", "Task was destroyed but it is pending")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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

    def failed(self, op: str, exc: BaseException | int | str | None) -> None:
        """``op`` failed cleanly: with an OSError, an errno, or (a command) its exit status."""
        code = exc if isinstance(exc, int) else getattr(exc, "errno", None) or 0
        name = exc if isinstance(exc, str) else errno.errorcode.get(code, type(exc).__name__ if exc is not None and not isinstance(exc, int) else str(code))
        with self.lock:
            self.c["ops_failed_cleanly"] += 1
            self.errnos[f"{op}:{name}"] += 1

    def to_json(self) -> dict:
        return {"c": dict(self.c), "errnos": dict(self.errnos), "examples": dict(self.examples)}

    def merge(self, d: dict) -> None:
        self.c.update(d["c"])
        self.errnos.update(d["errnos"])
        for k, v in d["examples"].items():
            self.examples[k] = (self.examples[k] + v)[:5]


# --------------------------------------------------------------------------- the load (child process)


class Load:
    """Writers and readers on one mount for ``seconds``; runs in its own process (see above)."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.mnt = Path(a.load)
        self.op_timeout = a.op_timeout
        self.seconds = a.seconds
        self.writers, self.readers = a.writers, a.readers
        self.seeded = {n: content(n, size) for n, size in json.loads(a.seeded).items()}
        self.k = Counters()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.attempted: dict[str, int] = {}  # name -> size of every write attempted
        self.acked: dict[str, int] = {}  # name -> size of writes whose fsync/close returned 0

    def call(self, op: str, limit: float, fn, *a, **kw):
        self.k.add("ops_attempted")
        o = bounded(fn, limit, *a, **kw)
        if o.status == "hang":
            self.k.add("hangs", example=f"{op} {a[:1]} still running after {limit:.0f}s")
        elif o.status == "error":
            self.k.failed(op, o.error)
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
            o = self.call("write", 3 * self.op_timeout + MARGIN, write_file, self.mnt / name, data, rng.random() < 0.7)
            if o.status == "hang":
                return  # this thread's file is wedged; don't pile up more
            if o.status != "ok":
                continue
            with self.lock:
                self.acked[name] = size
            r = self.call("readback", self.op_timeout + MARGIN, read_file, self.mnt / name)
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
                o = self.call("read", self.op_timeout + MARGIN, read_file, self.mnt / name)
                expect = want
            else:
                off = rng.randrange(len(want))
                n = rng.choice([4096, 100_000, 1 * MiB, 3 * MiB])
                o = self.call("pread", self.op_timeout + MARGIN, pread, self.mnt / name, off, n)
                expect = want[off : off + n]
            if o.status == "ok" and o.value != expect:
                self.k.add("corrupt_reads", example=f"{name}: got {len(o.value)} bytes, expected {len(expect)}")
            elif o.status == "hang":
                return
            time.sleep(rng.random() * 0.05)

    def run(self) -> dict:
        threads = [threading.Thread(target=self.writer, args=(i,), daemon=True, name=f"writer-{i}") for i in range(self.writers)]
        threads += [threading.Thread(target=self.reader, args=(i,), daemon=True, name=f"reader-{i}") for i in range(self.readers)]
        for t in threads:
            t.start()
        time.sleep(self.seconds)
        self.stop.set()
        deadline = time.monotonic() + 3 * self.op_timeout + 2 * MARGIN
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.k.add("hangs", len(stuck), example=f"threads never came back: {stuck}")
        with self.lock:
            return {"counters": self.k.to_json(), "attempted": dict(self.attempted), "acked": dict(self.acked)}


# --------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.op_timeout = args.op_timeout
        # An oras push or tag still running after this is a hang (killed): each of its FUSE
        # operations may take --op-timeout, and the first that fails ends it.
        self.push_deadline = 3 * self.op_timeout
        # gc is safe while every push finishes within the grace; a killed push's last FUSE
        # operation may still run for --op-timeout.
        self.grace = self.push_deadline + self.op_timeout + 10
        self.work = Path(tempfile.mkdtemp(prefix="ocifs-soak-"))
        os.chmod(self.work, 0o711)  # nobody may walk to the mounts, not list the rest
        self.minio = MinioServer(self.work / "minio")
        self.toxi = Toxiproxy(self.work / "toxi")
        self.mounts: dict[str, Path] = {n: self.work / f"mnt-{n}" for n in ("main", "a", "b")}
        self.ocifs: dict[str, OcifsMount] = {}
        self.logs: dict[str, Path] = {n: self.work / f"ocifs-{n}.log" for n in self.mounts}
        self.pids: dict[str, int] = {}
        self.dead: set[str] = set()
        self.k = Counters()
        self.stop = threading.Event()
        self.attempted: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self.seeded: dict[str, bytes] = {}
        self.peak_rss = 0.0
        self.peak_fds = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.cli_output: list[str] = []  # gc, fsck, oras: scanned for tracebacks
        self.gc = collections.Counter()
        self.nobody = collections.Counter()
        self.pushers: list[Pusher] = []
        self.tracebacks: dict[str, int] = {}
        self.op_timeouts = self.secrets = self.other_uploads = 0

    # --- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        self.minio.start()
        self.toxi.start()
        self.proxy = self.toxi.proxy("s3", self.minio.endpoint)
        self.endpoint = self.proxy.endpoint
        self.s3 = self.minio.client(attempts=5, read_timeout=60)
        self.s3.create_bucket(Bucket=BUCKET)
        for i in range(8):
            name = f"seed/obj-{i}.bin"
            data = content(name, SEED_SIZES[i % len(SEED_SIZES)])
            self.s3.put_object(Bucket=BUCKET, Key=name, Body=data)
            self.seeded[name] = data
        self.env = s3_env(self.minio.access_key, self.minio.secret_key)
        for name, mnt in self.mounts.items():
            mnt.mkdir()
            extra = ["-o", "allow_other"] if name == "main" else []
            m = OcifsMount(f"s3://{BUCKET}", mnt, self.endpoint, self.work, env=self.env,
                           cache_dir=self.work / f"cache-{name}", log_file=self.logs[name],
                           extra_args=["--op-timeout", str(self.op_timeout), "--cache-size", str(CACHE_MIB),
                                       "--log-level", "debug", *extra])
            self.ocifs[name] = m
            m.mount()
            self.pids[name] = m.pid
        main = self.mounts["main"]
        (main / "w").mkdir()
        # What the other user tries to change: root's files (0644, 0600) and directory.
        g = main / "guarded"
        g.mkdir()
        (g / "owned.txt").write_bytes(b"root's file")
        (g / "secret").write_bytes(b"root's secret")
        os.chmod(g / "secret", 0o600)
        (g / "sub").mkdir()
        (g / "sub" / "keep").write_bytes(b"")
        self.guarded_before = self.s3_state("guarded/")
        # The layout exists before the pushers start (two new layouts at once race in oras).
        self.pool = [content(f"pool-{k}", 64 * 1024 + k) for k in range(5)]
        (self.work / "oras-home").mkdir()
        seed = Pusher(self, "seed", "a")
        if not seed.push("seed", {"seed.txt": b"seed"}):
            raise RigError(f"the first oras push failed: {seed.last_error}")
        self.pushers.append(seed)  # its tag is checked at the end like the others
        self.seed_blob = f"{LAYOUT}/blobs/sha256/{seed.images['seed'][0].split(':', 1)[1]}"
        log(f"MinIO {self.minio.endpoint}, proxy {self.endpoint}, mounts {self.work}/mnt-*, "
            f"daemon pids {self.pids}, gc --grace {self.grace:.0f}")

    def s3_state(self, prefix: str) -> dict[str, tuple]:
        out = {}
        for key in list_keys(self.s3, BUCKET, prefix):
            h = self.s3.head_object(Bucket=BUCKET, Key=key)
            out[key] = (h["ETag"], h["ContentLength"], tuple(sorted(h.get("Metadata", {}).items())))
        return out

    # --- commands (from this process, which holds no file of a mount open) ---------------
    def command(self, what: str, args: list, timeout: float, env: dict | None = None, cwd=None) -> Result | None:
        """Run a command within ``timeout``; None (and a hang counted) if it outlives it."""
        try:
            res = run(args, timeout=timeout, env=env or self.env, cwd=cwd)
        except CommandTimeout:
            self.k.add("hangs", example=f"{what} still running after {timeout:.0f}s (killed)")
            return None
        out = f"--- {what}: exit {res.returncode}\n{res.stdout}{res.stderr}"
        self.cli_output.append(out)
        with open(self.work / "cli.log", "a") as f:
            f.write(out)
        ocifs_failed = res.returncode != 0 and what in ("gc", "fsck")
        if ocifs_failed and len(res.stderr.strip().splitlines()) != 1:
            self.k.add("multiline_cli_errors", example=f"{what}: {len(res.stderr.splitlines())} lines on stderr (in {self.work}/cli.log)")
        return res

    # --- the other user -----------------------------------------------------------------------
    def nobody_loop(self) -> None:
        g = str(self.mounts["main"] / "guarded")
        lay = str(self.mounts["main"] / LAYOUT)
        blob = str(self.mounts["main"] / self.seed_blob)
        limit = 3 * self.op_timeout + MARGIN  # a lookup or two, then the call
        while not self.stop.is_set():
            try:
                with open(self.work / "nobody.stderr", "ab") as err:
                    proc = subprocess.Popen([SYSTEM_PYTHON, "-I", "-c", NOBODY_PROBE, g, lay, blob], user="nobody", group="nogroup",
                                            extra_groups=[], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=err, text=True, cwd="/", start_new_session=True)
            except OSError as e:
                self.k.add("rig_errors", example=f"cannot run {SYSTEM_PYTHON} as nobody: {e}")
                return
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
            reader.start()
            seen, last = 0, time.monotonic()
            while reader.is_alive():
                reader.join(0.5)
                if len(lines) > seen:
                    seen, last = len(lines), time.monotonic()
                elif time.monotonic() - last > limit:
                    self.k.add("hangs", example=f"as nobody: no answer for {limit:.0f}s after {lines[-1:] or 'start'}")
                    os.killpg(proc.pid, signal.SIGKILL)
                    reader.join(10)
                    break
            try:
                if proc.wait(timeout=30) not in (0, -signal.SIGKILL):
                    self.k.add("rig_errors", example=f"the probe as nobody exited {proc.returncode}: see nobody.stderr")
            except subprocess.TimeoutExpired:
                self.k.add("hangs", example="as nobody: the probe survived SIGKILL for 30 s")
            for line in lines:
                op, refuse, code = json.loads(line)
                self.k.add("ops_attempted")
                if code == 0:
                    self.nobody["ALLOWED" if refuse else "allowed (read of a 0644 file)"] += 1
                    if refuse:
                        self.k.add("unauthorized_changes", example=f"as nobody: {op} succeeded")
                elif code in (errno.EACCES, errno.EPERM):
                    self.nobody[errno.errorcode[code]] += 1
                else:
                    self.nobody[f"other ({errno.errorcode.get(code, code)})"] += 1
                    self.k.failed(f"nobody-{op}", code)
            time.sleep(0.5)

    # --- gc -----------------------------------------------------------------------------------
    def gc_loop(self) -> None:
        while not self.stop.is_set():
            res = self.command("gc", [*ocifs_cmd(), "gc", f"s3://{BUCKET}", "--endpoint-url", self.endpoint,
                                      "--grace", self.grace], timeout=300)
            if res is not None:
                self.gc["runs"] += 1
                if res.returncode != 0:
                    self.gc["failed"] += 1
                    self.k.failed("gc", f"exit {res.returncode}")
                for kind in ("condemned", "deleted", "spared"):
                    self.gc[kind] += len(re.findall(rf"^{kind} ", res.stdout, re.M))
                self.gc["marks swept"] += sum(int(n) for n in re.findall(r"swept (\d+) mark", res.stdout))
            self.stop.wait(2)

    # --- watching the daemons -------------------------------------------------------------------
    def sampler(self) -> None:
        while not self.stop.is_set():
            self.check_mounts()
            try:
                self.peak_rss = max(self.peak_rss, rss_mib(self.pids["main"]))
                self.peak_fds = max(self.peak_fds, fd_count(self.pids["main"]))
            except OSError:
                pass
            time.sleep(0.5)

    def check_mounts(self) -> None:
        for name, pid in self.pids.items():
            if name not in self.dead and not (alive(pid) and is_mounted(self.mounts[name])):
                self.dead.add(name)
                self.k.add("mount_deaths", example=f"mount {name} (daemon {pid}) died")

    # --- faults -----------------------------------------------------------------------------
    def faults_cycle(self, rng: random.Random):
        """(name, hold range, inject, undo) in a shuffled order, forever."""
        def toxic(type_, stream, toxicity=1.0, **attrs):
            return (lambda: self.proxy.add(type_, stream, toxicity, **attrs)), self.proxy.remove

        short = (3, 10)
        catalogue = [
            ("latency 300ms", short, *toxic("latency", "downstream", latency=300, jitter=100)),
            ("upload latency 200ms", short, *toxic("latency", "upstream", latency=200)),
            ("bandwidth 50KB/s", short, *toxic("bandwidth", "downstream", rate=50)),
            ("upload bandwidth 100KB/s", short, *toxic("bandwidth", "upstream", rate=100)),
            ("reset_peer 50%", short, *toxic("reset_peer", "downstream", 0.5, timeout=300)),
            ("responses cut after 1MiB 50%", short, *toxic("limit_data", "downstream", 0.5, bytes=1 * MiB)),
            ("uploads cut after 2MiB 50%", short, *toxic("limit_data", "upstream", 0.5, bytes=2 * MiB)),
            ("slicer", short, *toxic("slicer", "downstream", average_size=100, size_variation=50, delay=200)),
            ("silent server", short, *toxic("timeout", "downstream", 0.7, timeout=0)),
            ("connections refused", short, self.proxy.disable, lambda _: self.proxy.enable()),
            ("minio SIGKILL + restart", short, self.minio.kill, lambda _: self.minio.start()),
            # longer than --op-timeout: operations in flight give up (EIO) while S3 is frozen
            (f"minio SIGSTOP {self.op_timeout + 10:.0f}s + SIGCONT", (self.op_timeout + 10,) * 2,
             self.minio.pause, lambda _: self.minio.resume()),
        ]
        while True:
            rng.shuffle(catalogue)
            yield from catalogue

    def run(self) -> None:
        rng = random.Random(42)
        seconds = self.args.minutes * 60
        result = self.work / "load.json"
        load = subprocess.Popen([sys.executable, __file__, "--load", self.mounts["main"], "--result", result,
                                 "--seconds", str(seconds), "--writers", str(self.args.writers), "--readers", str(self.args.readers),
                                 "--op-timeout", str(self.op_timeout), "--seeded", json.dumps({n: len(d) for n, d in self.seeded.items()})],
                                stdin=subprocess.DEVNULL, start_new_session=True)
        runners = [Pusher(self, name, name) for name in ("a", "b")]
        self.pushers += runners
        threads = [threading.Thread(target=self.sampler, daemon=True, name="sampler"),
                   threading.Thread(target=self.gc_loop, daemon=True, name="gc"),
                   threading.Thread(target=self.nobody_loop, daemon=True, name="nobody")]
        threads += [threading.Thread(target=p.loop, daemon=True, name=f"pusher-{p.name}") for p in runners]
        for t in threads:
            t.start()
        end = time.monotonic() + seconds
        faults = self.faults_cycle(rng)
        while time.monotonic() < end - 10:
            name, hold, inject, undo = next(faults)
            hold_s = rng.uniform(*hold)
            log(f"fault: {name} for {hold_s:.0f}s   ({self.k.c['ops_attempted']} ops here, gc runs {self.gc['runs']}, "
                f"pushes {sum(p.counts['pushed'] for p in self.pushers)})")
            token = inject()
            self.faults[name] += 1
            time.sleep(hold_s)
            undo(token)
            time.sleep(rng.uniform(3, 6))  # recovery window: the mounts should work again
        time.sleep(max(0.0, end - time.monotonic()))
        self.stop.set()
        limit = 3 * self.op_timeout + 2 * MARGIN + 60
        try:
            load.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(load.pid, signal.SIGKILL)
            load.wait(timeout=30)
            self.k.add("hangs", example=f"the load process did not finish within {limit:.0f}s of the end")
        if result.exists():
            r = json.loads(result.read_text())
            self.k.merge(r["counters"])
            self.attempted, self.acked = r["attempted"], r["acked"]
        else:
            self.k.add("rig_errors", example=f"the load process left no result (exit {load.returncode})")
        deadline = time.monotonic() + 300 + 2 * MARGIN  # a gc run may still be sweeping
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.k.add("hangs", len(stuck), example=f"threads never came back: {stuck}")

    # --- verification -----------------------------------------------------------------------
    def verify(self) -> None:
        self.proxy.clear()
        if self.minio.running:
            self.minio.resume()
        else:
            self.minio.start()
        self.check_mounts()
        # multipart uploads of the writers: every file is closed now; aborted ones must disappear
        deadline = time.monotonic() + 60
        left = incomplete_uploads(self.s3, BUCKET, "w/")
        while left and time.monotonic() < deadline:
            time.sleep(2)
            left = incomplete_uploads(self.s3, BUCKET, "w/")
        if left:
            self.k.add("multipart_uploads_left", len(left), example=str(left[:3]))
        self.other_uploads = len(incomplete_uploads(self.s3, BUCKET)) - len(left)
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
        # every tag a push or tag acknowledged (and we did not untag) names its image
        tags = layout_tags(self.s3)
        for p in self.pushers:
            for tag, (digest, _) in p.images.items():
                if tags.get(tag) != digest:
                    self.k.add("acked_writes_lost", example=f"tag {tag}: {tags.get(tag)}, pushed {digest}")
        # the other user changed nothing
        if self.s3_state("guarded/") != self.guarded_before:
            self.k.add("unauthorized_changes", example="guarded/ differs in S3 from before the run")
        # the main mount still reads and writes
        main = self.mounts["main"]
        data = content("final-check", 2 * MiB)
        o = bounded(write_file, 3 * self.op_timeout, main / "w" / "final.bin", data)
        r = bounded(read_file, self.op_timeout + MARGIN, main / "seed" / "obj-3.bin")
        if o.status != "ok" or r.status != "ok" or r.value != self.seeded["seed/obj-3.bin"]:
            self.k.add("mount_broken_after", example=f"final write {o!r}, read {r!r}")
        # nothing dangles (straight to MinIO: no fault now)
        res = self.command("fsck", [*ocifs_cmd(), "fsck", f"s3://{BUCKET}", "--endpoint-url", self.minio.endpoint,
                                    "--grace", "3600"], timeout=600)
        if res is None or not re.search(r"^fsck: \d+ problem", res.stdout, re.M):
            self.k.add("dangling_references", example=f"fsck did not finish: {res and res.stderr.strip()[-300:]}")
        else:
            for line in res.stdout.splitlines():
                if line.split(":", 1)[0] in ("dangling", "invalid-index", "corrupt"):
                    self.k.add("dangling_references", example=line)

    def teardown(self) -> None:
        for name, m in self.ocifs.items():
            try:
                problem = m.teardown(timeout=300)
            except Exception as e:
                problem = str(e)
            if problem:
                self.k.add("mount_broken_after", example=f"ocifs umount {name}: {problem}")
        self.toxi.stop()
        self.minio.stop()

    def count_tracebacks(self) -> None:
        """After the unmount (shutdown paths log too): every Traceback line is a failure, and
        so are Python's reports of ignored exceptions and of tasks destroyed while pending."""
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            self.tracebacks[name] = sum(text.count(p) for p in NOISE)
            self.op_timeouts += text.count("gave up after")
            self.secrets += sum(text.count(s) for s in (self.minio.secret_key, "Signature=", "Authorization"))
        for name, n in self.tracebacks.items():
            if n:
                self.k.add("tracebacks", n, example=f"{n} in {self.logs[name]}")
        for out in self.cli_output:
            if any(p in out for p in NOISE):
                self.k.add("tracebacks", sum(out.count(p) for p in NOISE), example=f"{out.splitlines()[0]} (in {self.work}/cli.log)")

    def summary(self) -> int:
        c = self.k.c
        pushes = collections.Counter()
        for p in self.pushers:
            pushes.update(p.counts)
        must_be_zero = [*MUST_BE_ZERO, "multiline_cli_errors", "mount_broken_after", "rig_errors"]
        a = self.args
        lines = [
            "",
            "=== ocifs soak summary ===",
            f"duration                    {a.minutes:g} min, {a.writers} writers, {a.readers} readers, --op-timeout {self.op_timeout:g}",
            f"faults injected             {sum(self.faults.values())}  ({', '.join(f'{k} x{v}' for k, v in sorted(self.faults.items()))})",
            f"operations attempted        {c['ops_attempted']}",
            f"writes acknowledged         {len(self.acked)} of {len(self.attempted)} attempted",
            f"failed cleanly (errno)      {c['ops_failed_cleanly']}  ({', '.join(f'{k} x{v}' for k, v in self.k.errnos.most_common())})",
            f"oras (2 mounts)             {', '.join(f'{k} {v}' for k, v in sorted(pushes.items()))}",
            f"gc --grace {self.grace:<4.0f}             {', '.join(f'{k} {v}' for k, v in sorted(self.gc.items()))}",
            f"nobody on allow_other       {', '.join(f'{k} x{v}' for k, v in sorted(self.nobody.items()))}",
            f"multipart uploads not w/    {self.other_uploads} (of failed pushes: fsck --repair removes them after --grace)",
            f"daemon op-timeouts logged   {self.op_timeouts}",
            f"secrets in daemon logs      {self.secrets}",
            f"daemon peak RSS             {self.peak_rss:.0f} MiB (--cache-size {CACHE_MIB}), peak open fds {self.peak_fds}",
            "--- must be 0 ---",
        ]
        for name in must_be_zero:
            lines.append(f"{name:<27} {c[name]}")
            for ex in self.k.examples.get(name, []):
                lines.append(f"    e.g. {ex}")
        bad = [n for n in must_be_zero if c[n]]
        lines.append(f"RESULT: {'FAIL (' + ', '.join(bad) + ')' if bad else 'PASS'}")
        if a.keep or bad:
            lines.append(f"daemon logs: {self.work}/ocifs-*.log")
        print("\n".join(lines), flush=True)
        return 1 if bad else 0


# Run as nobody: one JSON line per attempt: [what, must be refused, errno (0: it worked)].
NOBODY_PROBE = r"""
import errno, json, os, sys
g, lay, blob = sys.argv[1:4]
def attempt(what, refuse, fn):
    try:
        fn()
        code = 0
    except OSError as e:
        code = e.errno or errno.EIO
    print(json.dumps([what, refuse, code]), flush=True)
def opened(path, flags):
    os.close(os.open(path, flags, 0o644))
def read(path):
    with open(path, "rb") as f:
        f.read()
attempt("read owned", False, lambda: read(g + "/owned.txt"))
attempt("read secret", True, lambda: read(g + "/secret"))
attempt("open O_WRONLY", True, lambda: opened(g + "/owned.txt", os.O_WRONLY))
attempt("open O_RDWR|O_TRUNC", True, lambda: opened(g + "/owned.txt", os.O_RDWR | os.O_TRUNC))
attempt("truncate", True, lambda: os.truncate(g + "/owned.txt", 0))
attempt("unlink", True, lambda: os.unlink(g + "/owned.txt"))
attempt("rename", True, lambda: os.rename(g + "/owned.txt", g + "/moved"))
attempt("chmod", True, lambda: os.chmod(g + "/owned.txt", 0o666))
attempt("chown", True, lambda: os.chown(g + "/owned.txt", os.getuid(), -1))
attempt("utime", True, lambda: os.utime(g + "/owned.txt", (1, 1)))
attempt("utime now", True, lambda: os.utime(g + "/owned.txt"))
attempt("create", True, lambda: opened(g + "/new", os.O_WRONLY | os.O_CREAT))
attempt("mkdir", True, lambda: os.mkdir(g + "/newdir"))
attempt("rmdir", True, lambda: os.rmdir(g + "/sub"))
attempt("link", True, lambda: os.link(g + "/owned.txt", g + "/link"))
attempt("symlink", True, lambda: os.symlink("owned.txt", g + "/sym"))
attempt("write index.json", True, lambda: opened(lay + "/index.json", os.O_WRONLY | os.O_TRUNC))
attempt("write blob", True, lambda: opened(blob, os.O_WRONLY))
attempt("unlink blob", True, lambda: os.unlink(blob))
attempt("create blob", True, lambda: opened(lay + "/blobs/sha256/" + "0" * 64, os.O_WRONLY | os.O_CREAT))
"""


def layout_tags(s3) -> dict[str, str]:
    raw = get_or_none(s3, BUCKET, f"{LAYOUT}/index.json")
    doc = json.loads(raw) if raw else {"manifests": []}
    return {d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"]
            for d in doc.get("manifests", []) if "org.opencontainers.image.ref.name" in (d.get("annotations") or {})}


# Untag by rewriting index.json through the mount, as a tool that untags would (in a child
# process: see the module docstring).
UNTAG = r"""
import json, sys
path, gone = sys.argv[1], set(sys.argv[2:])
try:
    with open(path, "rb") as f:
        index = json.load(f)
    index["manifests"] = [d for d in index["manifests"] if d["digest"] not in gone]
    with open(path, "w") as f:
        json.dump(index, f)
except OSError as e:  # a fault: one line, like oras
    sys.exit(f"untag: {e}")
"""


class Pusher:
    """One CI runner on one mount: oras pushes images sharing layers from a pool, untags all but
    its two newest, and re-tags an untagged image now and then. A push that fails is fine;
    one that succeeded must keep its tag (unless we untagged it)."""

    def __init__(self, soak: Soak, name: str, mount: str) -> None:
        self.soak, self.name, self.mnt = soak, name, soak.mounts[mount]
        self.rng = random.Random(name)
        self.images: dict[str, tuple[str, dict[str, bytes]]] = {}  # tag -> (digest, files), acknowledged
        self.untagged: list[tuple[str, dict[str, bytes]]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.last_error = ""
        self.dir = soak.work / f"push-{name}"

    def oras(self, what: str, *args: str, cwd=None) -> Result | None:
        env = {**self.soak.env, "HOME": str(self.soak.work / "oras-home")}
        res = self.soak.command(f"oras {what} ({self.name})", [require_tool(TOOLS / "oras"), *args], self.soak.push_deadline, env=env, cwd=cwd)
        if res is not None and res.returncode != 0:
            self.last_error = ((res.stderr or res.stdout).strip().splitlines() or [""])[-1]
            self.soak.k.failed(f"oras-{what}", f"exit {res.returncode}")
        return res

    def push(self, tag: str, files: dict[str, bytes]) -> bool:
        d = self.dir / tag
        d.mkdir(parents=True, exist_ok=True)
        for n, data in files.items():
            (d / n).write_bytes(data)
        res = self.oras("push", "push", "--oci-layout", f"{self.mnt}/{LAYOUT}:{tag}", *files, cwd=d)
        shutil.rmtree(d, ignore_errors=True)
        if res is None or res.returncode != 0:
            self.counts["push failed"] += 1
            return False
        digest = next(line.split()[-1] for line in res.stdout.splitlines() if line.startswith("Digest:"))
        self.images[tag] = (digest, files)
        self.counts["pushed"] += 1
        return True

    def loop(self) -> None:
        i = 0
        while not self.soak.stop.is_set():
            i += 1
            if i % 4 == 0 and self.untagged:
                digest, files = self.untagged.pop(self.rng.randrange(len(self.untagged)))
                tag = f"{self.name}-re{i}"
                res = self.oras("tag", "tag", "--oci-layout", f"{self.mnt}/{LAYOUT}@{digest}", tag)
                if res is not None and res.returncode == 0:
                    self.images[tag] = (digest, files)
                    self.counts["retagged"] += 1
                continue
            files = {f"pool{k}.bin": self.soak.pool[k] for k in self.rng.sample(range(len(self.soak.pool)), 2)}
            files[f"own-{self.name}-{i}.txt"] = f"{self.name} image {i}".encode()
            if not self.push(f"{self.name}-{i}", files) or len(self.images) <= 2:
                continue
            old = sorted(self.images, key=lambda t: int(re.sub(r"\D", "", t.rsplit("-", 1)[-1])))[:-2]
            gone = {self.images[t][0] for t in old} - {d for t, (d, _) in self.images.items() if t not in old}
            for t in old:  # whether or not the untag works, these tags are no longer promised
                d, f = self.images.pop(t)
                if d in gone:
                    self.untagged.append((d, f))
            if not gone:
                continue
            res = self.soak.command(f"untag ({self.name})", [sys.executable, "-c", UNTAG, self.mnt / LAYOUT / "index.json", *sorted(gone)],
                                    self.soak.push_deadline)
            self.counts["untagged" if res is not None and res.returncode == 0 else "untag failed"] += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--writers", type=int, default=6)
    p.add_argument("--readers", type=int, default=6)
    p.add_argument("--op-timeout", type=float, default=20.0, help="the mounts' --op-timeout (S3 is frozen for 10 s longer)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, MinIO data)")
    # the load's child process (internal)
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seeded", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        result = Load(args).run()
        Path(args.result).write_text(json.dumps(result))
        os._exit(0)  # threads stuck in a FUSE call (counted as hangs) must not hold the exit
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
    if os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK):
        print(f"soak needs root (mounts, user nobody) and {SYSTEM_PYTHON}: run scripts/setup.sh", file=sys.stderr)
        return 2
    soak = Soak(args)
    status = 2
    try:
        soak.setup()
        soak.run()
        soak.verify()
        soak.stop.set()
        soak.teardown()
        soak.count_tracebacks()
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
            print(f"kept {soak.work} (ocifs-*.log, minio/minio.log)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
