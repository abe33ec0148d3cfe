"""Process plumbing shared by every benchmark: servers, mounts, cleanup, /proc sampling.

Everything started here is registered with :data:`CLEANUP` and torn down in reverse order on
exit, on an exception and on SIGINT/SIGTERM. Mounts are unmounted with their own tool first and
``fusermount3 -u -z`` as the last resort. Only processes this module started are signalled,
always by pid.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"
MiB = 1024 * 1024
GiB = 1024 * MiB

MINIO_USER = "ocifs-bench"
MINIO_PASSWORD = "ocifs-bench-secret"
REGION = "us-east-1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tool(name: str) -> str | None:
    """Path of an executable: .tools/bin, the venv, then PATH; None if absent."""
    for d in (TOOLS, VENV_BIN):
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- cleanup


class Cleanup:
    """A LIFO of teardown callbacks, run once, also on SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._installed = False
        self._signals = 0

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self.run_all)

        def on_signal(signum, frame):  # noqa: ARG001
            self._signals += 1
            if self._signals == 1:
                log(f"\n[bench] got {signal.Signals(signum).name}: stopping; mounts and servers are cleaned up "
                    "on the way out (signal again to force)")
                raise KeyboardInterrupt
            log("[bench] second signal: cleaning up now")
            self.run_all()
            os._exit(130)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def push(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        self._stack.append((what, fn))
        return fn

    def pop_run(self, fn: Callable[[], None]) -> None:
        """Run one registered callback now and forget it."""
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][1] is fn:
                what, _ = self._stack.pop(i)
                self._call(what, fn)
                return
        fn()

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # cleanup is best effort, but loud
            log(f"[bench] cleanup of {what} failed: {type(exc).__name__}: {exc}")

    def run_all(self) -> None:
        while self._stack:
            what, fn = self._stack.pop()
            self._call(what, fn)


CLEANUP = Cleanup()


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM then SIGKILL one process we started (by pid, never by name)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- mounts


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def is_mounted(path: str | os.PathLike) -> bool:
    target = os.path.realpath(str(path))
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and _unescape(parts[1]) == target:
                return True
    return False


def force_unmount(path: str | os.PathLike) -> None:
    """Last resort: lazy FUSE unmount (bounded)."""
    for _ in range(5):
        if not is_mounted(path):
            return
        subprocess.run(
            ["fusermount3", "-u", "-z", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        time.sleep(0.2)


def wait_mounted(path: str | os.PathLike, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return True
        if proc is not None and proc.poll() is not None and not is_mounted(path):
            return False
        time.sleep(0.1)
    return is_mounted(path)


def drop_caches() -> bool:
    """sync + echo 3 > /proc/sys/vm/drop_caches (root); False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- /proc


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime+stime of a process (its own threads; not waited-for children)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        # fields[0] is state (field 3); utime is field 14, stime 15 -> index 11, 12
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kib(pid: int | None, key: str) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes(pid: int | None) -> int | None:
    kib = proc_status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss(pid: int | None) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux >= 4.0)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
        return True
    except OSError:
        return False


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children so far (user+sys)."""
    t = os.times()
    return t.children_user + t.children_system


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- MinIO


@dataclass
class Endpoint:
    """An S3 endpoint with credentials. ``url`` is what clients use (maybe via toxiproxy)."""

    url: str
    access_key: str
    secret_key: str
    region: str = REGION
    direct_url: str | None = None  # MinIO itself (metrics), when we run it
    metrics: bool = False

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.pop(k, None)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env


@dataclass
class MinioServer:
    proc: subprocess.Popen
    data_dir: Path
    endpoint: Endpoint
    log_path: Path


def start_minio(workdir: Path) -> MinioServer:
    exe = tool("minio")
    if exe is None:
        raise SystemExit(f"minio not found in {TOOLS}: run scripts/setup.sh")
    data = workdir / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    port, console = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        MINIO_ROOT_USER=MINIO_USER,
        MINIO_ROOT_PASSWORD=MINIO_PASSWORD,
        MINIO_PROMETHEUS_AUTH_TYPE="public",
        MINIO_BROWSER="off",
        MINIO_UPDATE="off",
    )
    log_path = workdir / "minio.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [exe, "server", str(data), "--address", f"127.0.0.1:{port}",
             "--console-address", f"127.0.0.1:{console}", "--quiet"],
            env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    CLEANUP.push("minio", lambda: stop_process(proc))
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"minio exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/minio/health/live", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"minio not live after 60 s: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    ep = Endpoint(url, MINIO_USER, MINIO_PASSWORD, direct_url=url, metrics=True)
    return MinioServer(proc, data, ep, log_path)


def minio_metrics(direct_url: str) -> dict[str, float]:
    """MinIO's live S3 counters (metrics v3; the v2 cluster endpoint is cached for ~10 s).

    Keys: ``req:<Api>`` (minio_api_requests_total), ``rx_bytes`` / ``tx_bytes`` (bytes MinIO
    received / sent in S3 requests and responses).
    """
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(direct_url + "/minio/metrics/v3/api/requests", timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return out
    for line in text.splitlines():
        if not line or line.startswith("#") or 'type="s3"' not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, val = rest.partition("} ")
        try:
            v = float(val.split()[0])
        except (ValueError, IndexError):
            continue
        if name == "minio_api_requests_total":
            api = _label(labels, "name")
            out[f"req:{api}"] = out.get(f"req:{api}", 0) + v
        elif name == "minio_api_requests_traffic_received_bytes":
            out["rx_bytes"] = out.get("rx_bytes", 0) + v
        elif name == "minio_api_requests_traffic_sent_bytes":
            out["tx_bytes"] = out.get("tx_bytes", 0) + v
    return out


def _label(labels: str, key: str) -> str:
    for part in labels.split(","):
        k, _, v = part.partition("=")
        if k.strip() == key:
            return v.strip().strip('"')
    return "?"


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in sorted(d.items()) if v}


# --------------------------------------------------------------------------- S3 admin (sync)


def boto_client(ep: Endpoint):
    import botocore.config
    import botocore.session

    session = botocore.session.get_session()
    return session.create_client(
        "s3", endpoint_url=ep.url, region_name=ep.region,
        aws_access_key_id=ep.access_key, aws_secret_access_key=ep.secret_key,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, max_pool_connections=32,
            retries={"max_attempts": 5, "mode": "standard"}, read_timeout=300,
        ),
    )


def delete_prefix(client, bucket: str, prefix: str) -> int:
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [o["Key"] for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            n += len(keys)
    # abort leftover multipart uploads under the prefix
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for u in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    except Exception:
        pass
    return n


# --------------------------------------------------------------------------- ocifs mount


@dataclass
class OcifsMount:
    path: Path
    cache_dir: Path
    log_file: Path
    endpoint: Endpoint
    url: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another revision

    @property
    def pid(self) -> int | None:
        import hashlib

        pf = Path("/run/ocifs") / (hashlib.sha1(str(self.path).encode()).hexdigest()[:16] + ".pid")
        if os.getuid() != 0:
            base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ocifs-{os.getuid()}") / "ocifs"
            pf = base / pf.name
        try:
            return int(pf.read_text())
        except (OSError, ValueError):
            return None

    def mount(self) -> None:
        exe = tool("ocifs")
        if exe is None:
            raise RuntimeError("ocifs console script missing: run scripts/setup.sh")
        self.path.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        CLEANUP.push(f"ocifs mount {self.path}", self.teardown)
        res = subprocess.run(
            [exe, "mount", self.url, str(self.path), "--endpoint-url", self.endpoint.url,
             "--cache-dir", str(self.cache_dir), "--log-file", str(self.log_file), *self.extra],
            env={**self.endpoint.env(), **self.env}, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90,
        )
        if res.returncode != 0 or not is_mounted(self.path):
            raise RuntimeError(
                f"ocifs mount failed ({res.returncode}): {res.stderr.strip()[-500:]}\n{self.log_tail()}"
            )

    def umount(self, timeout: float = 900) -> None:
        if not is_mounted(self.path):
            return
        exe = tool("ocifs")
        res = subprocess.run(
            [exe, "umount", str(self.path), "--timeout", str(int(timeout))],
            env={**self.endpoint.env(), **self.env}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout + 30,
        )
        if res.returncode != 0:
            raise RuntimeError(f"ocifs umount failed: {res.stderr.strip()[-500:]}\n{self.log_tail()}")

    def teardown(self) -> None:
        try:
            self.umount(timeout=120)
        except Exception as exc:
            log(f"[bench] ocifs umount {self.path}: {exc}; forcing")
        finally:
            force_unmount(self.path)
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "(no daemon log)"
        return "--- ocifs log tail ---\n" + "\n".join(lines)


def make_workdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    CLEANUP.push(f"workdir {d}", lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@contextlib.contextmanager
def timed():
    t = {"start": time.perf_counter()}
    yield t
    t["seconds"] = time.perf_counter() - t["start"]
