"""Debian's ``docker-registry`` (CNCF distribution v2.8) on 127.0.0.1: plain HTTP, no auth,
deletes enabled; what ``oras cp`` copies to and from in the interop tests and matrix."""

from __future__ import annotations

import os
from pathlib import Path

from testkit.paths import require_tool
from testkit.procs import free_port
from testkit.server import Server, http_ok


class Registry(Server):
    """``Registry(workdir).start()``; ``addr`` is ``127.0.0.1:PORT``."""

    name = "registry"
    ready_timeout = 30.0

    def __init__(self, workdir: Path, exe: str | os.PathLike[str] = "docker-registry") -> None:
        super().__init__(workdir)
        self.exe = exe
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.config_path = self.workdir / "config.yml"
        self.config_path.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n"
        )

    def argv(self) -> list[str]:
        return [require_tool(self.exe), "serve", str(self.config_path)]

    def ready(self) -> bool:
        return http_ok(f"http://{self.addr}/v2/")
