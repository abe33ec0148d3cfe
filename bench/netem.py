"""Network profiles: toxiproxy between every client and MinIO.

toxiproxy (v2.12) applies toxics per connection and per direction: ``latency`` delays every
chunk by a fixed time without limiting throughput (a pipeline delay), ``bandwidth`` paces one
connection's bytes (``rate`` in KB/s, 1 KB = 1000 bytes). See bench/README.md for why these
numbers stand in for S3.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import testkit
from bench.common import start_server

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


class Toxiproxy(testkit.Toxiproxy):
    """The rig's toxiproxy-server with one proxy, ``s3``, shaped by a profile."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, metrics=True)
        self.s3: testkit.Proxy | None = None

    def create_proxy(self, upstream: str) -> str:
        self.s3 = self.proxy("s3", upstream)
        return self.s3.endpoint

    def apply(self, profile: str) -> None:
        for t in PROFILES[profile]["toxics"]:
            self.s3.add(t["type"], t["stream"], 1.0, name=t["name"], **t["attributes"])

    def toxics(self) -> list:
        return self.s3.toxics()

    def bytes(self) -> dict[str, float]:
        """Wire bytes through the proxy: ``up`` (client->S3) and ``down`` (S3->client)."""
        out: dict[str, float] = {}
        try:
            text = self.request("GET", "/metrics")
        except (urllib.error.URLError, OSError):
            return out
        for line in str(text).splitlines():
            if line.startswith("toxiproxy_proxy_sent_bytes_total{"):
                labels, _, val = line.partition("} ")
                d = "down" if 'direction="downstream"' in labels else "up"
                out[f"wire_{d}_bytes"] = out.get(f"wire_{d}_bytes", 0) + float(val)
        return out


def start_toxiproxy(workdir: Path, upstream: str, profile: str) -> tuple[Toxiproxy, str]:
    tp = start_server(Toxiproxy(workdir), "toxiproxy")
    url = tp.create_proxy(upstream)
    tp.apply(profile)
    return tp, url
