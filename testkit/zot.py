"""The pinned zot registry (v2.1.9, minimal build) on 127.0.0.1, with the storage configurations
the project documents, and a tiny client for its distribution API.

HTTP errors of the API are returned, not raised: the tests look at status codes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from testkit.paths import TOOLS, RigError, require_tool
from testkit.procs import free_port, tail
from testkit.server import Server, http_ok


def storage_on_root(root: object) -> dict:
    """zot's local driver with its root on a mount: no dedupe (it needs hard links and 0-byte
    placeholder blobs), no GC (it deletes by mtime: run ``ocifs gc``), no commit (every close
    is already durable on ocifs). The minimal build has no extensions, so no database is kept
    anywhere, let alone on the mount."""
    return {"rootDirectory": str(root), "dedupe": False, "gc": False, "commit": False}


def storage_on_s3(local_root: object, bucket: str, endpoint: str, access_key: str, secret_key: str,
                  region: str = "us-east-1") -> dict:
    """zot's own S3 driver on a bucket, ``rootdirectory`` unset: repositories are plain OCI
    layouts at the bucket root (``<repo>/index.json``, ``<repo>/blobs/sha256/<hex>``), the same
    keys an ocifs mount of ``s3://bucket`` uses. ``local_root`` holds zot's local state."""
    return {
        "rootDirectory": str(local_root),
        "dedupe": False,
        "gc": False,
        "storageDriver": {
            "name": "s3",
            "region": region,
            "bucket": bucket,
            "regionendpoint": endpoint,
            "forcepathstyle": True,
            "secure": endpoint.startswith("https://"),
            "skipverify": True,
            "accesskey": access_key,
            "secretkey": secret_key,
        },
    }


class Zot(Server):
    """One zot: ``Zot(storage, workdir, name).start()``; ``restart`` keeps port and config.
    Its output goes to ``<name>.out``, its own log to ``<name>.log``."""

    output_suffix = ".out"
    stop_timeout = 30.0

    def __init__(self, storage: dict, workdir: Path, name: str = "zot", log_level: str = "info") -> None:
        self.name = name
        super().__init__(workdir)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{name}.log"
        self.config_path = self.workdir / f"{name}.json"
        self.config = {
            "distSpecVersion": "1.1.1",
            "storage": storage,
            "http": {"address": "127.0.0.1", "port": str(self.port)},
            "log": {"level": log_level, "output": str(self.log_path)},
        }
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def argv(self) -> list[str]:
        return [require_tool(TOOLS / "zot"), "serve", str(self.config_path)]

    def ready(self) -> bool:
        return http_ok(f"http://{self.addr}/v2/")

    def log_text(self) -> str:
        return super().log_text() + tail(self.log_path, 1 << 20)

    def errors_logged(self) -> list[str]:
        """zot's error-level log lines so far, except background tasks that a stop interrupted
        ("context canceled": its dedupe/restore walk still running at SIGTERM)."""
        lines = tail(self.log_path, 1 << 30).splitlines()
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
            raise RigError(f"GET {path} on {self.name}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def catalog(self) -> list[str]:
        return sorted(self.json("/v2/_catalog").get("repositories") or [])

    def tags(self, repo: str) -> list[str]:
        return sorted(self.json(f"/v2/{repo}/tags/list").get("tags") or [])
