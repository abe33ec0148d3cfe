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


def render(values: dict[str, float]) -> str:
    """Prometheus text format; ``requests.GetObject`` -> ocifs_s3_requests_total{op="GetObject"}."""
    lines = []
    for name in sorted(values):
        v = values[name]
        v = int(v) if float(v).is_integer() else v
        kind, _, label = name.partition(".")
        if kind == "requests":
            lines.append(f'ocifs_s3_requests_total{{op="{label}"}} {v}')
        elif kind == "errors":
            lines.append(f'ocifs_s3_errors_total{{op="{label}"}} {v}')
        elif kind == "bytes":
            lines.append(f'ocifs_s3_bytes_total{{direction="{label}"}} {v}')
        else:
            lines.append(f"ocifs_{name.replace('.', '_')} {v}")
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


async def serve_http(addr: str, source: Source) -> None:
    """Opt-in Prometheus endpoint: GET /metrics on HOST:PORT (any path answers the same)."""
    host, _, port = addr.rpartition(":")
    try:
        await trio.serve_tcp(lambda stream: _http_one(stream, source), int(port), host=host.strip("[]") or "127.0.0.1")
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
