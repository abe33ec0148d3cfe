"""Live counters of a mount, as Prometheus text, on a unix socket beside the pid file.

``ocifs stats MOUNTPOINT`` reads them; tests and the benchmark count S3 requests with them.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger(__name__)

Source = Callable[[], dict[str, float]]


# name in the counters dict -> (Prometheus name, type, help). Counters with a label are
# "<group>.<label>" in the dict.
METRICS: dict[str, tuple[str, str, str]] = {
    "requests": ("ocifs_s3_requests_total", "counter", "S3 requests sent, by operation"),
    "errors": ("ocifs_s3_errors_total", "counter", "S3 requests that failed (after retries), by operation; 404s and lost conditional writes are not errors"),
    "bytes": ("ocifs_s3_bytes_total", "counter", "bytes of object data moved to/from S3"),
    "retries": ("ocifs_s3_retries_total", "counter", "S3 attempts botocore retried"),
    "index.merges": ("ocifs_index_merges_total", "counter", "index.json publishes that lost a race and were merged"),
    "index.publishes": ("ocifs_index_publishes_total", "counter", "index.json versions published (one PUT holds the rewrites of every close waiting on this mount)"),
    "index.rewrites": ("ocifs_index_rewrites_total", "counter", "index.json rewrites (closes, fsyncs, renames) published"),
    "fuse.reads": ("ocifs_fuse_reads_total", "counter", "FUSE read requests"),
    "fuse.writes": ("ocifs_fuse_writes_total", "counter", "FUSE write requests"),
    "cache.hits": ("ocifs_cache_hits_total", "counter", "chunk reads served from memory (or from a GET already in flight)"),
    "cache.misses": ("ocifs_cache_misses_total", "counter", "chunk reads that needed a GET"),
    "cache.bytes": ("ocifs_cache_bytes", "gauge", "bytes of chunks held in memory"),
    "open.files": ("ocifs_open_files", "gauge", "open file handles"),
    "inodes": ("ocifs_inodes", "gauge", "inodes the kernel knows about"),
    "uploads.active": ("ocifs_uploads_active", "gauge", "files with writes not yet published"),
    "readahead.window_bytes": ("ocifs_readahead_window_bytes", "gauge", "largest read-ahead window of any open file"),
    "disk.hits": ("ocifs_disk_cache_hits_total", "counter", "blob opens served from the --disk-cache (no GET)"),
    "disk.misses": ("ocifs_disk_cache_misses_total", "counter", "blob opens the --disk-cache could not serve"),
    "disk.stored": ("ocifs_disk_cache_stored_total", "counter", "blobs verified and written to the --disk-cache"),
    "disk.evicted": ("ocifs_disk_cache_evicted_total", "counter", "blobs this mount evicted from the --disk-cache (least recently used)"),
    "disk.dropped": ("ocifs_disk_cache_dropped_total", "counter", "cache files found wrong (size or digest, when opened or written) and removed"),
    "disk.errors": ("ocifs_disk_cache_errors_total", "counter", "disk failures; the blob is then read from S3"),
    "disk.bytes": ("ocifs_disk_cache_bytes", "gauge", "bytes in the --disk-cache at this mount's last scan"),
}
_LABEL = {"requests": "op", "errors": "op", "bytes": "direction"}


def render(values: dict[str, float]) -> str:
    """Prometheus text exposition: HELP and TYPE for every metric, zero-valued ones too."""
    groups: dict[str, list[tuple[str, float]]] = {k: [] for k in METRICS}
    for name, v in values.items():
        group, _, label = name.partition(".")
        if group in _LABEL:
            groups[group].append((f'{{{_LABEL[group]}="{label}"}}', v))
        elif name in METRICS:
            groups[name].append(("", v))
    lines = []
    for key, (prom, kind, help_text) in METRICS.items():
        samples = groups[key] or ([] if key in _LABEL else [("", 0)])
        lines.append(f"# HELP {prom} {help_text}")
        lines.append(f"# TYPE {prom} {kind}")
        for labels, v in sorted(samples):
            v = int(v) if float(v).is_integer() else v
            lines.append(f"{prom}{labels} {v}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """The inverse of :func:`render`, for ``ocifs stats`` and tests."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


async def serve(path: Path, source: Source) -> None:
    """Answer every connection with the current counters, then close it.

    A broken metrics socket must never take the mount down: failures are logged and the
    service stops.
    """
    try:
        await _serve(path, source)
    except Exception as exc:
        log.warning("stats socket %s stopped: %s", path, exc)


async def _serve(path: Path, source: Source) -> None:
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    try:
        while True:
            conn, _ = await sock.accept()
            with conn:
                try:
                    with trio.move_on_after(5):
                        data = memoryview(render(source()).encode())
                        while data:
                            data = data[await conn.send(data) :]
                except OSError:
                    pass
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def fetch(path: Path, timeout: float = 5.0) -> str:
    """Read the counters of the mount whose socket is ``path`` (blocking client)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode()


# Connections the HTTP endpoint serves at once; more are closed at once (a scraper needs one).
HTTP_CONNECTIONS = 16


async def serve_http(addr: str, source: Source) -> None:
    """Opt-in Prometheus endpoint: GET /metrics on HOST:PORT (any path answers the same).

    At most HTTP_CONNECTIONS at once, each for at most 5 s: a flood of connections costs the
    daemon a bounded number of descriptors and tasks.
    """
    host, _, port = addr.rpartition(":")
    slots = trio.Semaphore(HTTP_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            await _http_one(stream, source)
        finally:
            slots.release()

    try:
        await trio.serve_tcp(handler, int(port), host=host.strip("[]") or "127.0.0.1")
    except Exception as exc:
        log.warning("metrics endpoint %s stopped: %s", addr, exc)


async def _http_one(stream: trio.SocketStream, source: Source) -> None:
    try:
        with trio.move_on_after(5):
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 8192:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            body = render(source()).encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            await stream.send_all(head + body)
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await stream.aclose()
