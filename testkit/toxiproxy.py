"""toxiproxy-server between a client and S3, and its REST API: proxies on free 127.0.0.1
ports, and toxics (latency, bandwidth, resets, cut bodies, silence) on them."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from testkit.paths import TOOLS, require_tool
from testkit.procs import free_port
from testkit.server import Server


class Toxiproxy(Server):
    """One toxiproxy-server (``metrics``: with ``-proxy-metrics``, bytes per proxy and direction)."""

    name = "toxiproxy"
    ready_timeout = 30.0

    def __init__(self, workdir: Path | None = None, *, metrics: bool = False) -> None:
        super().__init__(Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ocifs-toxi-")))
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.metrics = metrics
        self._toxics = 0

    def argv(self) -> list[str]:
        return [require_tool(TOOLS / "toxiproxy-server"), "-host", "127.0.0.1", "-port", str(self.port),
                *(["-proxy-metrics"] if self.metrics else [])]

    def ready(self) -> bool:
        try:
            self.request("GET", "/version")
            return True
        except (urllib.error.URLError, OSError):
            return False

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        """One API call: its JSON answer (or text, or None when empty); HTTP errors raise."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A new proxy to ``upstream`` (``host:port`` or an ``http://`` endpoint)."""
        return Proxy(self, name, upstream)

    def next_toxic_name(self, type: str, stream: str) -> str:
        self._toxics += 1
        return f"{type}_{stream}_{self._toxics}"


class Proxy:
    """One proxy: ``endpoint`` is what the client is given instead of the upstream's."""

    def __init__(self, toxi: Toxiproxy, name: str, upstream: str) -> None:
        if "://" in upstream:
            u = urlparse(upstream)
            upstream = f"{u.hostname}:{u.port}"
        self.toxi = toxi
        self.name = name
        port = free_port()
        toxi.request("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}",
                                          "upstream": upstream, "enabled": True})
        self.endpoint = f"http://127.0.0.1:{port}"
        self.active: list[str] = []

    def add(self, type: str, stream: str = "downstream", toxicity: float = 1.0, name: str | None = None,
            **attributes: Any) -> str:
        """Add a toxic; returns its name (for :meth:`remove`)."""
        name = name or self.toxi.next_toxic_name(type, stream)
        self.toxi.request("POST", f"/proxies/{self.name}/toxics", {"name": name, "type": type, "stream": stream,
                                                                   "toxicity": toxicity, "attributes": attributes})
        self.active.append(name)
        return name

    def remove(self, toxic: str) -> None:
        self.toxi.request("DELETE", f"/proxies/{self.name}/toxics/{toxic}")
        if toxic in self.active:
            self.active.remove(toxic)

    def toxics(self) -> list[dict]:
        return self.toxi.request("GET", f"/proxies/{self.name}/toxics") or []

    def clear(self) -> None:
        """No toxics, and enabled: the network is fine again."""
        for t in self.toxics():
            self.remove(t["name"])
        self.active.clear()
        self.enable()

    def disable(self) -> None:
        """Connections are refused (and open ones closed)."""
        self.toxi.request("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.toxi.request("POST", f"/proxies/{self.name}", {"enabled": True})

    def delete(self) -> None:
        self.toxi.request("DELETE", f"/proxies/{self.name}")
