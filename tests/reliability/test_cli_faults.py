"""The CLI against an endpoint that accepts connections and never answers (a frozen S3, a
black-holing proxy): one line on stderr and a non-zero exit, within the bucket check's bound.
Found by scripts/soak.py: `ocifs gc` printed asyncio's "Task was destroyed but it is pending!"
and an ignored GeneratorExit after its one line."""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import is_mounted, ocifs_bin, run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts every connection and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("command", [["gc", "--grace", "60"], ["fsck"], ["ls"], ["mount"]], ids=lambda c: c[0])
def test_a_silent_endpoint_is_one_line_on_stderr(s3, silent_endpoint, command, tmp_path):
    mountpoint = [str(tmp_path)] if command[0] == "mount" else []
    res = run([*ocifs_bin(), command[0], "s3://some-bucket", *mountpoint, "--endpoint-url", silent_endpoint, *command[1:]],
              env=s3.env(), timeout=120, check=False)
    assert res.returncode != 0, res.describe()
    assert not is_mounted(tmp_path)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer" in lines[0], res.describe()
