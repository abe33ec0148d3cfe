"""The pinned zot registry on 127.0.0.1, and a tiny HTTP client for its distribution API.

No pytest here: the tests (through conftest.py) and matrix.py both use it. Errors are
:class:`ZotError` with the tail of zot's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT = 60  # seconds for zot to answer GET /v2/ after start
STOP_TIMEOUT = 30


class ZotError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_on_root(root) -> dict:
    """zot's local driver with its root on a mount: no dedupe (it needs hard links and 0-byte
    placeholder blobs), no GC (it deletes by mtime: run ``ocifs gc``), no commit (every close
    is already durable on ocifs). The minimal build has no extensions, so no database is kept
    anywhere, let alone on the mount."""
    return {"rootDirectory": str(root), "dedupe": False, "gc": False, "commit": False}


def storage_on_s3(local_root, bucket: str, endpoint: str, access_key: str, secret_key: str) -> dict:
    """zot's own S3 driver on a bucket, ``rootdirectory`` unset: repositories are plain OCI
    layouts at the bucket root (``<repo>/index.json``, ``<repo>/blobs/sha256/<hex>``), the same
    keys an ocifs mount of ``s3://bucket`` uses. ``local_root`` holds zot's local state."""
    return {
        "rootDirectory": str(local_root),
        "dedupe": False,
        "gc": False,
        "storageDriver": {
            "name": "s3",
            "region": "us-east-1",
            "bucket": bucket,
            "regionendpoint": endpoint,
            "forcepathstyle": True,
            "secure": False,
            "skipverify": True,
            "accesskey": access_key,
            "secretkey": secret_key,
        },
    }


class Zot:
    """One zot process; ``start``/``stop``/``restart`` keep the port and the config."""

    def __init__(self, exe: str, storage: dict, workdir: Path, name: str = "zot") -> None:
        self.exe = exe
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{name}.log"
        self.config_path = self.workdir / f"{name}.json"
        self.config = {
            "distSpecVersion": "1.1.1",
            "storage": storage,
            "http": {"address": "127.0.0.1", "port": str(self.port)},
            "log": {"level": "info", "output": str(self.log_path)},
        }
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = READY_TIMEOUT) -> Zot:
        out = open(self.workdir / f"{self.name}.out", "ab")
        self.proc = subprocess.Popen(
            [self.exe, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ZotError(f"{self.name} exited with {self.proc.returncode} at start\n{self.log_tail()}")
            try:
                if self.request("GET", "/v2/", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ZotError(f"{self.name} not answering GET /v2/ after {timeout}s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> Zot:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for f in (self.workdir / f"{self.name}.out", self.log_path):
            try:
                text += f.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return f"--- {self.name} log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def errors_logged(self) -> list[str]:
        """zot's error-level log lines so far, except background tasks that a stop interrupted
        ("context canceled": its dedupe/restore walk still running at SIGTERM)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [ln for ln in lines if '"level":"error"' in ln and '"context canceled"' not in ln
                and '"http: Server closed"' not in ln]

    # --- the distribution API ---------------------------------------------------------------------
    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        """One HTTP request to zot: (status, headers, body); HTTP errors are returned, not raised."""
        url = path if path.startswith("http") else f"http://{self.addr}{path}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str) -> dict:
        status, _h, body = self.request("GET", path)
        if status != 200:
            raise ZotError(f"GET {path} on {self.name}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def catalog(self) -> list[str]:
        return sorted(self.json("/v2/_catalog").get("repositories") or [])

    def tags(self, repo: str) -> list[str]:
        return sorted(self.json(f"/v2/{repo}/tags/list").get("tags") or [])
