"""Drive ocifs's FUSE operations directly, without a kernel (s3ql's t3_fs_api style).

:class:`Rig` holds an :class:`ocifs.fs.Operations` on a :class:`fakes3.FakeS3`, running under
trio, and offers the calls a process makes (open, write, close, ...) as short methods that take
the calling process's pid. Everything is deterministic: no kernel, no threads, no network.
What the kernel would add (its caches, read-ahead, permission checks) is tested through real
mounts in tests/integration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fakes3 import FakeS3
from ocifs.config import Config
from ocifs.fs import Operations

MiB = 1024 * 1024


@dataclasses.dataclass
class Ctx:
    """What pyfuse3.RequestContext carries (its fields are read-only, so tests use this)."""

    pid: int
    uid: int = 0
    gid: int = 0
    umask: int = 0o022


@dataclasses.dataclass
class Fields:
    """pyfuse3.SetattrFields, writable."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


class Rig:
    def __init__(self, ops: Operations, s3: FakeS3, nursery: trio.Nursery) -> None:
        self.ops = ops
        self.s3 = s3
        self.nursery = nursery

    # --- paths ------------------------------------------------------------------------------
    async def lookup(self, path: str, pid: int = 1) -> int:
        """The inode of ``path`` (raises FUSEError(ENOENT) like the kernel would report)."""
        inode = pyfuse3.ROOT_INODE
        for name in [p for p in path.split("/") if p]:
            e = await self.ops.lookup(inode, name.encode(), Ctx(pid))
            if e.st_ino == 0:
                raise pyfuse3.FUSEError(2)
            inode = e.st_ino
        return inode

    async def parent_and_name(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rpartition("/")
        return (await self.lookup(parent) if parent else pyfuse3.ROOT_INODE), name.encode()

    async def mkdir(self, path: str, pid: int = 1) -> None:
        inode = pyfuse3.ROOT_INODE
        for name in [p for p in path.split("/") if p]:
            e = await self.ops.lookup(inode, name.encode(), Ctx(pid))
            if e.st_ino == 0:
                e = await self.ops.mkdir(inode, name.encode(), 0o755, Ctx(pid))
            inode = e.st_ino

    # --- files ------------------------------------------------------------------------------
    async def open(self, path: str, flags: int = os.O_RDONLY, pid: int = 1) -> int:
        """open(2): create when O_CREAT and missing, like the kernel does."""
        parent, name = await self.parent_and_name(path)
        e = await self.ops.lookup(parent, name, Ctx(pid))
        if e.st_ino == 0:
            if not flags & os.O_CREAT:
                raise pyfuse3.FUSEError(2)
            fi, _ = await self.ops.create(parent, name, 0o644, flags, Ctx(pid))
            return fi.fh
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise pyfuse3.FUSEError(17)
        fi = await self.ops.open(e.st_ino, flags, Ctx(pid))
        return fi.fh

    async def write(self, fh: int, data: bytes, off: int) -> int:
        return await self.ops.write(fh, off, data)

    async def read(self, fh: int, off: int = 0, size: int = 1 << 40) -> bytes:
        out = bytearray()
        while len(out) < size:
            data = await self.ops.read(fh, off + len(out), min(size - len(out), 4 * MiB))
            if not data:
                break
            out += data
        return bytes(out)

    async def close(self, fh: int) -> None:
        """close(2): flush (its error is close's), then release."""
        try:
            await self.ops.flush(fh)
        finally:
            await self.ops.release(fh)

    async def write_file(self, path: str, data: bytes, pid: int = 1, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
        fh = await self.open(path, flags, pid)
        try:
            if data:
                await self.write(fh, data, 0)
        finally:
            await self.close(fh)

    async def read_file(self, path: str, pid: int = 1) -> bytes:
        fh = await self.open(path, os.O_RDONLY, pid)
        try:
            return await self.read(fh)
        finally:
            await self.close(fh)

    async def truncate(self, path: str, size: int, pid: int = 1, fh: int | None = None) -> None:
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        await self.ops.setattr(await self.lookup(path), attr, Fields(update_size=True), fh, Ctx(pid))

    async def chmod(self, path: str, mode: int, pid: int = 1) -> None:
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = mode
        await self.ops.setattr(await self.lookup(path), attr, Fields(update_mode=True), None, Ctx(pid))

    async def stat_size(self, path: str, pid: int = 1) -> int:
        return (await self.ops.getattr(await self.lookup(path, pid), Ctx(pid))).st_size

    async def unlink(self, path: str, pid: int = 1) -> None:
        parent, name = await self.parent_and_name(path)
        await self.ops.unlink(parent, name, Ctx(pid))

    async def rename(self, old: str, new: str, pid: int = 1) -> None:
        p1, n1 = await self.parent_and_name(old)
        p2, n2 = await self.parent_and_name(new)
        await self.ops.rename(p1, n1, p2, n2, 0, Ctx(pid))

    # --- the bucket -------------------------------------------------------------------------
    def obj(self, key: str) -> bytes | None:
        o = self.s3.objects.get(key)
        return o.data if o is not None else None


def run(test: Callable[[Rig], Awaitable[Any]], tmp: Path, s3: FakeS3 | None = None, **cfg: Any) -> None:
    """Run ``test(rig)`` under trio with a fresh mount of a FakeS3 (settings from ``cfg``)."""

    async def one(rigs: list[Rig]) -> None:
        await test(rigs[0])

    run_mounts(one, tmp, 1, s3, **cfg)


def run_mounts(
    test: Callable[[list[Rig]], Awaitable[Any]],
    tmp: Path,
    mounts: int,
    s3: FakeS3 | None = None,
    clock: trio.abc.Clock | None = None,
    **cfg: Any,
) -> None:
    """Run ``test(rigs)`` under trio with ``mounts`` fresh mounts of one FakeS3, as many hosts
    mounting one bucket would (each its own limiter, cache dir and state). ``clock``: e.g. a
    ``trio.testing.MockClock(autojump_threshold=0)``, so injected S3 latency costs no real time."""

    finished: list[bool] = []

    async def main() -> None:
        fake = s3 or FakeS3()
        fake.limiter = trio.CapacityLimiter(16 * mounts)
        rigs = []
        async with trio.open_nursery() as nursery:
            for i in range(mounts):
                settings: dict[str, Any] = dict(
                    bucket="b", cache_dir=tmp / ("cache" if mounts == 1 else f"cache{i}"), chunk_size=MiB,
                    part_size=5 * MiB, cache_size=64 * MiB, op_timeout=30
                )
                settings.update(cfg)
                config = Config(**settings)
                config.staging_dir.mkdir(parents=True, exist_ok=True)
                ops = Operations(config, fake)  # type: ignore[arg-type]
                await ops.start(nursery)
                rigs.append(Rig(ops, fake, nursery))
            await test(rigs)
            finished.append(True)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    # A stray trio.Cancelled unwinds the test body and trio.run returns quietly: that is a
    # failure (it is how a timed-out read used to end the FUSE loop), never a pass.
    assert finished, "the test body did not run to its end (a stray cancellation unwound it)"
