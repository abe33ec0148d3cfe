"""Fixtures for the interop tests: real clients (oras, skopeo, umoci, zot) on a real ocifs mount.

``s3``, ``bucket`` and ``mount_factory`` come from tests/conftest.py (a real MinIO and
real ``ocifs mount`` / ``ocifs umount``). The mounts made here log at debug level, so a
failing test carries a useful daemon log tail (the top-level report hook attaches it).
"""

from __future__ import annotations

import pytest

from conftest import rig_failures, running
from testkit import Registry, Zot, storage_on_root

from .interop_lib import build_umoci_image, registry_bin

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
    with running(Registry(tmp_path_factory.mktemp("registry"), registry_bin())) as reg:
        yield reg.addr


# --------------------------------------------------------------------------- zot


@pytest.fixture
def zot_factory(request, tmp_path_factory):
    """Start real zot registries: ``zot_factory(storage_config, name)`` (see testkit/zot.py).

    The pinned binary comes from ``.tools/bin/zot``; a missing one fails naming setup.sh.
    Every zot started here is stopped at teardown; a failing test carries each one's log tail.
    """
    zots: list[Zot] = []
    request.node._rig_servers = zots  # their logs go with a failing test's report

    def make(storage: dict, name: str = "zot") -> Zot:
        z = Zot(storage, tmp_path_factory.mktemp(name), name)
        zots.append(z)
        with rig_failures():
            return z.start()

    yield make
    for z in zots:
        z.stop()


@pytest.fixture
def zot(ocifs, zot_factory):
    """zot with its storage root on the ``ocifs`` mount."""
    return zot_factory(storage_on_root(ocifs.path), "zot")

