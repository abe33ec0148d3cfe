"""Network profiles: toxiproxy between every client and MinIO.

toxiproxy (v2.12) applies toxics per connection and per direction: ``latency`` delays every
chunk by a fixed time without limiting throughput (a pipeline delay), ``bandwidth`` paces one
connection's bytes (``rate`` in KB/s, 1 KB = 1000 bytes). See bench/README.md for why these
numbers stand in for S3.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import CLEANUP, free_port, stop_process, tool

# name -> list of toxics; every profile is applied to both directions where it says so.
# "toxics": None means no proxy at all: clients talk to MinIO directly.
PROFILES: dict[str, dict] = {
    "loopback": {"doc": "no proxy: MinIO straight over loopback (no emulated latency or bandwidth, no proxy CPU)",
                 "toxics": None},
    "local": {"doc": "toxiproxy with no toxics (loopback speed, the proxy's own cost only)", "toxics": []},
    "cloud": {
        "doc": "25 ms to first byte of every response, 90 MB/s per connection each way (one S3 connection)",
        "toxics": [
            {"name": "latency_down", "type": "latency", "stream": "downstream", "attributes": {"latency": 25, "jitter": 0}},
            {"name": "bw_down", "type": "bandwidth", "stream": "downstream", "attributes": {"rate": 90_000}},
            {"name": "bw_up", "type": "bandwidth", "stream": "upstream", "attributes": {"rate": 90_000}},
        ],
    },
    "wan": {
        "doc": "40 ms each way (80 ms RTT-like first byte), 20 MB/s per connection each way (cross-region)",
        "toxics": [
            {"name": "latency_down", "type": "latency", "stream": "downstream", "attributes": {"latency": 40, "jitter": 5}},
            {"name": "latency_up", "type": "latency", "stream": "upstream", "attributes": {"latency": 40, "jitter": 5}},
            {"name": "bw_down", "type": "bandwidth", "stream": "downstream", "attributes": {"rate": 20_000}},
            {"name": "bw_up", "type": "bandwidth", "stream": "upstream", "attributes": {"rate": 20_000}},
        ],
    },
}


@dataclass
class Toxiproxy:
    proc: subprocess.Popen
    api: str
    listen: str = ""

    def _req(self, method: str, path: str, body: dict | None = None) -> dict | str:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        try:
            return json.loads(text) if text else {}
        except json.JSONDecodeError:
            return text

    def create_proxy(self, upstream: str) -> str:
        port = free_port()
        p = self._req("POST", "/proxies", {"name": "s3", "listen": f"127.0.0.1:{port}",
                                            "upstream": upstream, "enabled": True})
        self.listen = p["listen"]
        return f"http://{self.listen}"

    def apply(self, profile: str) -> None:
        for t in PROFILES[profile]["toxics"]:
            self._req("POST", "/proxies/s3/toxics", {**t, "toxicity": 1.0})

    def toxics(self) -> list:
        return self._req("GET", "/proxies/s3/toxics")

    def bytes(self) -> dict[str, float]:
        """Wire bytes through the proxy: ``up`` (client->S3) and ``down`` (S3->client)."""
        out: dict[str, float] = {}
        try:
            text = self._req("GET", "/metrics")
        except (urllib.error.URLError, OSError):
            return out
        for line in str(text).splitlines():
            if line.startswith("toxiproxy_proxy_sent_bytes_total{"):
                labels, _, val = line.partition("} ")
                d = "down" if 'direction="downstream"' in labels else "up"
                out[f"wire_{d}_bytes"] = out.get(f"wire_{d}_bytes", 0) + float(val)
        return out


def start_toxiproxy(workdir: Path, upstream: str, profile: str) -> tuple[Toxiproxy, str]:
    exe = tool("toxiproxy-server")
    if exe is None:
        raise SystemExit("toxiproxy-server not found in .tools/bin: run scripts/setup.sh")
    port = free_port()
    logf = open(workdir / "toxiproxy.log", "wb")
    proc = subprocess.Popen([exe, "-host", "127.0.0.1", "-port", str(port), "-proxy-metrics"],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    CLEANUP.push("toxiproxy", lambda: (stop_process(proc), logf.close()))
    tp = Toxiproxy(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while True:
        try:
            tp._req("GET", "/version")
            break
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"toxiproxy did not start: {(workdir / 'toxiproxy.log').read_text()[-1000:]}")
            time.sleep(0.1)
    url = tp.create_proxy(upstream)
    tp.apply(profile)
    return tp, url
