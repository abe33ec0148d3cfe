"""The ``zot-pull`` workload: ``oras pull`` over HTTP from zot v2.1.9, with zot's storage on each
FUSE target (``rootDirectory`` = the mount) and, as the reference, zot's own S3 driver
(``zot-s3``) — all on the same bucket, through the same endpoint (the proxy), in the same run.

Per case, the image is pushed once (untimed) through a zot with the S3 driver talking to MinIO
directly: plain OCI layouts at the bucket root (``<repo>/index.json``, ``<repo>/blobs/...``, no
directory markers), which every target then serves. Per repetition and target: a fresh mount
(new daemon, empty cache), a fresh zot on it, ``drop_caches``, then the timed
``oras pull --plain-http 127.0.0.1:PORT/<repo>:v1 -o DIR``; the files are hashed and compared with
the pushed digests. ``daemon_cpu_s`` / RSS are the FUSE daemon's (zot's for ``zot-s3``);
``extra.zot_cpu_s`` is zot's own CPU.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import testkit
from bench.common import CLEANUP, drop_caches, log, proc_cpu_seconds, tool
from bench.targets import Target
from bench.workloads import (
    BLOB_MEDIA, BlobCase, Env, Meter, StepFailed, _quiet_delete, checked, delete_prefix, failed, oras,
    record, source_blobs, verify_pulled,
)

WORKLOAD = "zot-pull"


class ZotS3(Target):
    """Not a filesystem: zot's S3 storage driver on the bucket."""

    name = "zot-s3"
    kind = "zot"

    def missing(self):
        return None if tool("zot") else "zot not installed in .tools/bin: run scripts/setup.sh"

    def version(self):
        return "zot v2.1.9 (minimal), storageDriver s3"

    def flags(self):
        return "storageDriver {name: s3, region, bucket, regionendpoint: PROXY, forcepathstyle, secure: false}, dedupe: false, gc: false"


def on_s3(env: Env, state: Path, endpoint) -> dict:
    """zot's own S3 driver on the run's bucket through ``endpoint`` (state kept in ``state``)."""
    return testkit.storage_on_s3(state, env.bucket, endpoint.url, endpoint.access_key, endpoint.secret_key,
                                 region=endpoint.region)


class Zot(testkit.Zot):
    """The rig's zot on 127.0.0.1, stopped by :data:`CLEANUP` (by pid); a zot that does not
    start is a failed step."""

    def __init__(self, env: Env, storage: dict, name: str) -> None:
        super().__init__(storage, env.workdir / "zot" / f"{name}-{time.monotonic_ns()}", "zot", log_level="warn")
        self._undo = CLEANUP.push(f"zot {self.addr}", super().stop)
        try:
            self.start()
        except testkit.RigError as e:
            raise StepFailed(str(e)) from None

    def tail(self) -> str:
        return self.log_tail()[-1500:]

    def stop(self) -> None:
        CLEANUP.pop_run(self._undo)


_pushed: dict[str, str] = {}  # case name -> repo already in the bucket


def image(env: Env, case: BlobCase) -> str:
    """The case's image in the bucket (pushed once per run through zot's S3 driver, direct)."""
    if case.name in _pushed:
        return _pushed[case.name]
    repo = f"bench-zot-{case.name.lower()}"
    blobs = source_blobs(env, case)
    direct = env.direct_endpoint or env.endpoint
    delete_prefix(env, repo + "/")
    zot = Zot(env, on_s3(env, env.workdir / "zot" / "setup-state", direct), "setup")
    try:
        files = [f"{name}:{BLOB_MEDIA}" for name, *_ in blobs]
        checked(oras(env, "push", "--plain-http", f"{zot.addr}/{repo}:v1", *files, cwd=blobs[0][1].parent),
                "oras push (zot-pull setup)")
    finally:
        zot.stop()
    CLEANUP.push(f"delete {repo}/", lambda: _quiet_delete(env, repo + "/"))
    _pushed[case.name] = repo
    return repo


def zot_unit(env: Env, target: Target, case: BlobCase, rep: int) -> list[dict]:
    """One timed pull of the case's image through zot on ``target`` (a mount, or zot-s3)."""
    recs: list[dict] = []
    zot = None
    try:
        repo = image(env, case)
        blobs = source_blobs(env, case)
        if isinstance(target, ZotS3):
            zot = Zot(env, on_s3(env, env.workdir / "zot" / f"state-{rep}", env.endpoint), target.name)
            pid = zot.pid
        else:
            mnt = target.mount()
            zot = Zot(env, testkit.storage_on_root(mnt), target.name)
            pid = target.pid
        out = env.workdir / "out" / f"zot-{repo}-{target.name}-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        drop_caches()
        z0 = proc_cpu_seconds(zot.pid)
        m = Meter(env, pid)
        checked(oras(env, "pull", "--plain-http", f"{zot.addr}/{repo}:v1", "-o", str(out)), "oras pull via zot")
        res = m.stop()
        z1 = proc_cpu_seconds(zot.pid)
        verify_pulled(out, blobs)
        shutil.rmtree(out, ignore_errors=True)
        recs.append(record(env, WORKLOAD, case.name, case.size, target, rep, res, case.total, blobs=case.count,
                           digests_checked=True, zot_cpu_s=None if z0 is None or z1 is None else round(z1 - z0, 3)))
    except Exception as exc:
        if zot is not None:
            log(f"[bench] zot on {target.name}: {zot.tail()[-600:]}")
        recs.append(failed(env, WORKLOAD, case.name, case.size, target, rep, exc))
    finally:
        if zot is not None:
            zot.stop()
        if target.kind == "fuse":
            try:
                target.umount()
            except Exception as exc:
                recs.append(failed(env, "unmount", case.name, case.size, target, rep, exc))
    return recs


def units(cases: list[BlobCase], reps: int, fuse_targets: list[Target], ctx) -> list[tuple]:
    """("zot", case, rep, target) for every case and repetition: the FUSE targets and zot-s3,
    interleaved, the order rotating with the repetition like the other workloads."""
    tgts = [t for t in fuse_targets if t.kind == "fuse"] + [ZotS3(ctx)]
    out = []
    for case in cases:
        for rep in range(reps):
            order = tgts[rep % len(tgts):] + tgts[: rep % len(tgts)]
            out += [("zot", case, rep, t) for t in order]
    return out
