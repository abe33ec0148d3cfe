"""Run a model sequence (tests/model.py) against ocifs's FUSE operations on the fake S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyfuse3

from fakes3 import FakeS3
from fsrig import Ctx, Fields, Rig, run
from model import FLAGS, Model



class Mismatch(AssertionError):
    pass


class Errno(int):
    """An errno answer (never mistaken for a byte count)."""


async def _answer(aw: Any) -> Any:
    """An operation's result, or its errno (an :class:`Errno`)."""
    try:
        result = await aw
    except pyfuse3.FUSEError as exc:
        return Errno(exc.errno)
    return "ok" if result is None else result


def _check(step: int, op: tuple[Any, ...], got: Any, allowed: list[Any], model: Model) -> None:
    if got not in allowed:
        show = [a if not isinstance(a, bytes) or len(a) < 40 else f"<{len(a)} bytes>" for a in allowed]
        g = got if not isinstance(got, bytes) or len(got) < 40 else f"<{len(got)} bytes>"
        raise Mismatch(f"step {step} {op}: got {g!r}, the model allows {show!r}")


async def drive(r: Rig, ops: list[tuple[Any, ...]], model: Model) -> None:
    fhs: list[int] = []  # parallel to model.handles
    for step, op in enumerate(ops):
        kind = op[0]
        if kind in ("write", "ftruncate", "read", "flush", "fsync", "close") and not fhs:
            continue
        if kind in ("write", "ftruncate") and not model.handle(op[1]).writable:
            continue
        if kind == "read" and not model.handle(op[1]).readable:
            continue  # the kernel's EBADF: never reaches the filesystem
        if kind == "open":
            _, pid, path, mode = op
            allowed = model.open(pid, path, mode)
            try:
                fh = await r.open(path, FLAGS[mode], pid)
                got: Any = "ok"
            except pyfuse3.FUSEError as exc:
                got = exc.errno
            _check(step, op, got, allowed, model)
            if got == "ok":
                fhs.append(fh)
        elif kind == "write":
            _, idx, where, length, byte = op
            fh = fhs[idx % len(fhs)]
            allowed, off, data = model.write(idx, where, length, byte)
            got = await _answer(r.ops.write(fh, off, data))
            _check(step, op, "ok" if not isinstance(got, Errno) and got == len(data) else got, allowed, model)
        elif kind == "ftruncate":
            _, idx, size = op
            fh = fhs[idx % len(fhs)]
            allowed = model.ftruncate(idx, size)
            attr = pyfuse3.EntryAttributes()
            attr.st_size = size
            inode = r.ops.files.handles[fh].node.inode
            got = await _answer(r.ops.setattr(inode, attr, Fields(update_size=True), fh, Ctx(model.handle(idx).pid)))
            _check(step, op, "ok" if not isinstance(got, int) else got, allowed, model)
        elif kind == "truncate":
            _, pid, path, size = op
            allowed = model.truncate(pid, path, size)
            _check(step, op, await _answer(r.truncate(path, size, pid)), allowed, model)
        elif kind == "read":
            idx = op[1]
            fh = fhs[idx % len(fhs)]
            allowed = model.read(idx)
            got = await _answer(r.read(fh))
            _check(step, op, got, allowed, model)
            if isinstance(got, bytes):
                model.handle(idx).returned = model.handle(idx).returned or bool(got)
        elif kind == "stat":
            _, pid, path = op
            allowed = model.stat(pid, path)
            _check(step, op, await _answer(r.stat_size(path, pid)), allowed, model)
        elif kind in ("flush", "fsync", "close"):
            idx = op[1]
            fh = fhs[idx % len(fhs)]
            allowed = model.durable(idx, final=kind != "fsync")
            call = r.ops.fsync(fh, False) if kind == "fsync" else r.ops.flush(fh)
            _check(step, op, await _answer(call), allowed, model)
            if kind == "close":
                await r.ops.release(fh)
                model.release(idx)
                fhs.remove(fh)
        elif kind == "rename":
            _, pid, src, dst = op
            allowed = model.rename(pid, src, dst)
            _check(step, op, await _answer(r.rename(src, dst, pid)), allowed, model)
        elif kind == "unlink":
            _, pid, path = op
            allowed = model.unlink(pid, path)
            _check(step, op, await _answer(r.unlink(path, pid)), allowed, model)
        elif kind == "fail_next_publish":
            model.fail_armed = True
            r.s3.reset_faults()
            r.s3.fail("*", when=lambda c: c.op in ("PutObject", "CompleteMultipartUpload"), times=1)
        model.covered[kind] += 1
        bucket = {k: o.data for k, o in r.s3.objects.items()}
        if bucket != model.bucket():
            raise Mismatch(f"after step {step} {op}: the bucket holds {_short(bucket)}, the model says {_short(model.bucket())}")
    # the end: every descriptor closed, nothing left in flight or half-done
    while fhs:
        idx = len(fhs) - 1
        model.durable(idx, final=True)
        await _answer(r.ops.flush(fhs[idx]))
        await r.ops.release(fhs.pop())
        model.release(idx)
    model.fail_armed = False
    r.s3.reset_faults()
    bucket = {k: o.data for k, o in r.s3.objects.items()}
    if bucket != model.bucket():
        raise Mismatch(f"at the end: the bucket holds {_short(bucket)}, the model says {_short(model.bucket())}")
    if r.s3.uploads:
        raise Mismatch(f"at the end: multipart uploads left: {list(r.s3.uploads)}")


def _short(d: dict[str, bytes]) -> dict[str, str]:
    return {k: (v.decode() if len(v) < 40 else f"<{len(v)} bytes {v[:8]!r}...>") for k, v in sorted(d.items())}


def check_sequence(ops: list[tuple[Any, ...]], tmp: Path, model: Model | None = None) -> Model:
    """Run ``ops`` on a fresh kernel-free mount and the model side by side; raise Mismatch."""
    m = model or Model()

    async def go(r: Rig) -> None:
        await drive(r, ops, m)

    run(go, tmp, FakeS3(), metadata_ttl=0)
    return m
