"""Fixtures for the interop tests: real clients (oras, skopeo, umoci, zot) on a real ocifs mount.

``s3``, ``bucket`` and ``mount_factory`` come from tests/conftest.py (a real MinIO and
real ``ocifs mount`` / ``ocifs umount``). The mounts made here log at debug level, so a
failing test carries a useful daemon log tail (the top-level report hook attaches it).
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import pytest

from .interop_lib import TOOLS, build_umoci_image, fail, free_port, registry_bin, require_tool, rmtree
from .zotserver import Zot, ZotError, storage_on_root

DEBUG = ["--log-level", "debug"]  # argparse: the last --log-level wins


@pytest.fixture
def ocifs(bucket, mount_factory):
    """A fresh bucket mounted with ocifs (debug log)."""
    return mount_factory(bucket, extra_args=DEBUG)


@pytest.fixture(scope="session")
def umoci_image(tmp_path_factory):
    """A local (not on the mount) multi-layer image layout built with umoci."""
    work = tmp_path_factory.mktemp("umoci-image")
    return build_umoci_image(work / "layout", work)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry (distribution v2.8) on 127.0.0.1, plain HTTP, no auth.

    Yields "127.0.0.1:PORT".
    """
    exe = registry_bin()
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    cfg = work / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {work / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = work / "registry.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [exe, "serve", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                fail(f"docker-registry exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                fail(f"docker-registry not answering after 30s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        rmtree(work)


# --------------------------------------------------------------------------- zot


@pytest.fixture
def zot_factory(request, tmp_path_factory):
    """Start real zot registries: ``zot_factory(storage_config, name)`` (see zotserver.py).

    The pinned binary comes from ``.tools/bin/zot``; a missing one fails naming setup.sh.
    Every zot started here is stopped at teardown; a failing test carries each one's log tail.
    """
    exe = require_tool(TOOLS / "zot")
    zots: list[Zot] = []
    request.node._zots = zots

    def make(storage: dict, name: str = "zot") -> Zot:
        z = Zot(exe, storage, tmp_path_factory.mktemp(name), name)
        zots.append(z)
        try:
            return z.start()
        except ZotError as e:
            fail(str(e))

    yield make
    for z in zots:
        z.stop()


@pytest.fixture
def zot(ocifs, zot_factory):
    """zot with its storage root on the ``ocifs`` mount."""
    return zot_factory(storage_on_root(ocifs.path), "zot")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for z in getattr(item, "_zots", []):
            rep.sections.append((f"{z.name} log", z.log_tail(60)))
