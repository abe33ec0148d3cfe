"""Helpers for the gc protocol tests: layouts in a :class:`FakeS3`, mock time, a gc run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from fakes3 import FakeS3
from ocifs.gc import Collector, GcReport
from ocifs.gcmarks import Clock, GcMarks

T0 = 1_700_000_000.0
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def wall() -> float:
    """Wall-clock time that follows trio's (mock) clock."""
    return T0 + trio.current_time()


def mock_clock() -> Clock:
    return Clock(wall=wall, mono=trio.current_time)


def store() -> FakeS3:
    """A bucket whose LastModified times follow the mock clock (call inside :func:`run`)."""
    return FakeS3(clock=wall)


def requests(s3: FakeS3) -> dict[str, int]:
    """Requests sent so far, by S3 operation."""
    return {k.removeprefix("requests."): v for k, v in s3.stats.items() if k.startswith("requests.")}


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` under trio with a mock clock that jumps ahead whenever every task sleeps."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


async def gc(s3: FakeS3, grace: float, prefix: str = "", dry_run: bool = False) -> GcReport:
    return await Collector(s3, prefix, grace, dry_run, clock=mock_clock()).run()


def marks(s3: FakeS3, ttl: float = 1.0, **kw: Any) -> GcMarks:
    return GcMarks(s3, ttl, clock=mock_clock(), **kw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Repo:
    """An OCI layout in the store, written the way oras leaves it."""

    def __init__(self, s3: FakeS3, root: str = "app/") -> None:
        self.s3, self.root = s3, root
        self.index: list[dict[str, Any]] = []
        s3.seed(root + "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        self.save()

    def key(self, data_or_hex: bytes | str) -> str:
        hexd = data_or_hex if isinstance(data_or_hex, str) else sha(data_or_hex)
        return f"{self.root}blobs/sha256/{hexd}"

    def put_blob(self, data: bytes) -> str:
        self.s3.seed(self.key(data), data)
        return sha(data)

    def image(self, layer: bytes, subject: str | None = None) -> dict[str, str]:
        """Blobs of a one-layer image (not tagged): keys of manifest, config, layer."""
        lay = self.put_blob(layer)
        cfg = self.put_blob(b'{"config":"' + layer.hex().encode() + b'"}')
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cfg}", "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{lay}", "size": len(layer)}],
        }
        if subject:
            doc["subject"] = {"mediaType": MANIFEST, "digest": f"sha256:{subject}", "size": 1}
        m = self.put_blob(json.dumps(doc).encode())
        return {"manifest": self.key(m), "config": self.key(cfg), "layer": self.key(lay), "hex": m}

    def tag(self, img: dict[str, str], tag: str) -> None:
        self.index.append(
            {"mediaType": MANIFEST, "digest": f"sha256:{img['hex']}", "size": 1, "annotations": {"org.opencontainers.image.ref.name": tag}}
        )
        self.save()

    def untag(self, img: dict[str, str]) -> None:
        self.index = [d for d in self.index if d["digest"] != f"sha256:{img['hex']}"]
        self.save()

    def save(self) -> None:
        self.s3.seed(self.root + "index.json", json.dumps({"schemaVersion": 2, "manifests": self.index}).encode())


def keys(img: dict[str, str]) -> set[str]:
    return {img["manifest"], img["config"], img["layer"]}
