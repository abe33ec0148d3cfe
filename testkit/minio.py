"""A private MinIO: its own data directory and free ports on 127.0.0.1, root credentials of
the rig's own, stoppable, SIGKILL-able, SIGSTOP-able and restartable on the same port and data
(what the reliability tests and the soak do to it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from testkit.minio_metrics import minio_counters
from testkit.paths import TOOLS, require_tool
from testkit.procs import free_port
from testkit.s3 import S3, s3_client, s3_env
from testkit.server import Server, http_ok

ACCESS_KEY = "ocifs-rig"
SECRET_KEY = "ocifs-rig-secret-0123456789"


class MinioServer(Server):
    """``MinioServer(root).start()``; ``root`` (default: a new temporary directory) holds the
    data (``root/data``) and the log (``root/minio.log``). ``env``: more ``MINIO_*`` settings
    (e.g. ``MINIO_API_REQUESTS_MAX`` for a server that throttles)."""

    name = "minio"

    def __init__(self, root: Path | None = None, *, port: int | None = None, env: dict[str, str] | None = None,
                 access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        super().__init__(Path(root) if root else Path(tempfile.mkdtemp(prefix="ocifs-minio-")))
        self.root = self.workdir
        self.data = self.root / "data"
        self.extra_env = env or {}
        self.port = port or free_port()
        self.console = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key, self.secret_key = access_key, secret_key

    def argv(self) -> list[str]:
        return [require_tool(TOOLS / "minio"), "server", str(self.data),
                "--address", f"127.0.0.1:{self.port}", "--console-address", f"127.0.0.1:{self.console}", "--quiet"]

    def environ(self) -> dict[str, str]:
        return {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_PROMETHEUS_AUTH_TYPE": "public", "MINIO_BROWSER": "off", "MINIO_UPDATE": "off",
                **self.extra_env}

    def ready(self) -> bool:
        return http_ok(self.endpoint + "/minio/health/live")

    def restart(self) -> MinioServer:
        """SIGKILL and start again (same port, same data): a crash and a supervisor's restart."""
        self.kill()
        return self.start()

    # -- clients
    def client(self, **kw: Any) -> Any:
        """A botocore client with the root credentials (keywords: :func:`testkit.s3.s3_client`)."""
        return s3_client(self.endpoint, self.access_key, self.secret_key, **kw)

    def s3(self) -> S3:
        return S3(self.endpoint, self.access_key, self.secret_key)

    def env(self) -> dict[str, str]:
        """The environment of a program that should reach this MinIO with the root credentials."""
        return s3_env(self.access_key, self.secret_key)

    def counters(self) -> dict[str, float]:
        return minio_counters(self.endpoint)
