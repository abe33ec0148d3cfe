"""Helpers shared by the interop tests.

The top-level ``tests/conftest.py`` owns the MinIO server, the buckets and the ocifs
mounts; its fixtures (``s3``, ``bucket``, ``mount_factory``) reach this directory on
their own, and its helpers that fail a test (``run``, ``require_tool``, ...) are
imported from it (``top``), like every other tier does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

import conftest as top
from conftest import require_tool, run

MiB = 1024 * 1024


# --------------------------------------------------------------------------- tools


def oras(*args, cwd=None, timeout: float = 300, check: bool = True):
    """The pinned oras CLI, kept away from the invoking user's registry config."""
    return top.oras(*args, cwd=cwd, timeout=timeout, check=check)


def skopeo(*args, timeout: float = 300, check: bool = True):
    exe = require_tool("skopeo")
    # --insecure-policy: there is no /etc/containers/policy.json requirement for oci:/dir:
    return run([exe, "--insecure-policy", *args], timeout=timeout, check=check)


def umoci(*args, cwd=None, timeout: float = 300, check: bool = True):
    exe = require_tool("umoci")
    return run([exe, *args], cwd=cwd, timeout=timeout, check=check)


def registry_bin() -> str:
    """Debian's ``docker-registry`` (CNCF distribution v2.8)."""
    return require_tool("docker-registry")


# --------------------------------------------------------------------------- layouts


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return "sha256:" + h.hexdigest()


def read_index(layout) -> dict:
    return json.loads((Path(layout) / "index.json").read_bytes())


def tagged(layout) -> dict[str, str]:
    """tag -> manifest digest, from a layout's index.json."""
    out = {}
    for d in read_index(layout).get("manifests", []):
        name = (d.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        if name:
            out[name] = d["digest"]
    return out


def blob_path(layout, digest: str) -> Path:
    alg, hexd = digest.split(":", 1)
    return Path(layout) / "blobs" / alg / hexd


def read_blob(layout, digest: str) -> bytes:
    return blob_path(layout, digest).read_bytes()


def referenced_digests(layout) -> set[str]:
    """Every digest reachable from index.json (manifests, configs, layers, subjects)."""
    seen: set[str] = set()
    todo = [d["digest"] for d in read_index(layout).get("manifests", [])]
    while todo:
        dg = todo.pop()
        if dg in seen:
            continue
        seen.add(dg)
        data = read_blob(layout, dg)
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        mt = doc.get("mediaType", "")
        if "manifest" in mt or "index" in mt or "config" in doc or "manifests" in doc:
            for key in ("config",):
                if isinstance(doc.get(key), dict):
                    seen.add(doc[key]["digest"])
            for d in doc.get("layers", []) or []:
                seen.add(d["digest"])
            for d in doc.get("manifests", []) or []:
                todo.append(d["digest"])
    return seen


def assert_layout_blobs_verify(layout) -> None:
    """Every blob reachable from index.json exists and hashes to its name."""
    for dg in sorted(referenced_digests(layout)):
        p = blob_path(layout, dg)
        assert p.is_file(), f"{p} is referenced but missing"
        assert sha256_file(p) == dg, f"{p} does not hash to its name"


def files_under(root) -> dict[str, str]:
    """relative path -> sha256 of every regular file under root."""
    root = Path(root)
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = sha256_file(p)
    return out


def archive_index(tar_path) -> dict:
    with tarfile.open(tar_path) as t:
        return json.load(t.extractfile("index.json"))


# --------------------------------------------------------------------------- images


def build_umoci_image(layout: Path, workdir: Path) -> dict:
    """A real multi-layer image made with umoci in a local layout.

    Tags: ``base`` (no layers), ``v1`` (one layer: /etc, /usr/share/data with a 300 KiB
    random file), ``v2`` (v1 + a second layer inserted at /opt/app).
    Returns {"layout": path, "rootfs_v2": {relpath: sha256}}.
    """
    import random

    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:base")
    bundle = workdir / "bundle"
    umoci("unpack", "--image", f"{layout}:base", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "motd").write_text("built by umoci for ocifs interop tests\n")
    (rootfs / "usr" / "share" / "data").mkdir(parents=True)
    (rootfs / "usr" / "share" / "data" / "blob.bin").write_bytes(
        random.Random(7).randbytes(300 * 1024)
    )
    for i in range(20):
        (rootfs / "usr" / "share" / "data" / f"small-{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
    umoci("repack", "--image", f"{layout}:v1", bundle)
    extra = workdir / "extra"
    (extra / "app" / "bin").mkdir(parents=True)
    (extra / "app" / "bin" / "run.sh").write_text("#!/bin/sh\necho hello\n")
    (extra / "app" / "lib.dat").write_bytes(random.Random(8).randbytes(64 * 1024))
    umoci("insert", "--image", f"{layout}:v1", "--tag", "v2", extra / "app", "/opt/app")
    check = workdir / "check"
    umoci("unpack", "--image", f"{layout}:v2", check)
    return {"layout": layout, "rootfs_v2": files_under(check / "rootfs")}


def fail(msg: str):
    pytest.fail(msg, pytrace=False)
