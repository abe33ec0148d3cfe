"""The model-based test (tests/model.py) through a real mount: one real process per pid.

A shorter run than the kernel-free one (tests/unit/test_model.py): every step is real system
calls by real processes on a real FUSE mount of MinIO, and after every step the bucket must hold
exactly what the model says. ``flush`` is close(dup(fd)): the same open file description.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

from hypothesis import HealthCheck, given, settings

from model import FLAGS, Model, sequences


# One simulated process: reads JSON commands, answers JSON ("ok", a value, or an errno).
WORKER = r"""
import base64, json, os, sys
root = sys.argv[1]
def p(name): return os.path.join(root, name)
def do(c):
    op = c["op"]
    if op == "open": return os.open(p(c["path"]), c["flags"], 0o644)
    if op == "write": return os.pwrite(c["fd"], bytes([c["byte"]]) * c["len"], c["off"])
    if op == "ftruncate": return os.ftruncate(c["fd"], c["size"])
    if op == "truncate": return os.truncate(p(c["path"]), c["size"])
    if op == "read":
        out = bytearray()
        while True:
            b = os.pread(c["fd"], 1 << 22, len(out))
            if not b: return base64.b64encode(bytes(out)).decode()
            out += b
    if op == "stat": return os.stat(p(c["path"])).st_size
    if op == "flush": return os.close(os.dup(c["fd"]))
    if op == "fsync": return os.fsync(c["fd"])
    if op == "close": return os.close(c["fd"])
    if op == "rename": return os.rename(p(c["src"]), p(c["dst"]))
    if op == "unlink": return os.unlink(p(c["path"]))
for line in sys.stdin:
    c = json.loads(line)
    try:
        r = do(c)
        out = {"ok": r}
    except OSError as e:
        out = {"errno": e.errno}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class Proc:
    def __init__(self, root: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-I", "-c", WORKER, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **cmd: Any) -> tuple[str, Any]:
        """("ok", value) or ("errno", n)."""
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, f"worker died on {cmd}"
        out = json.loads(line)
        return ("errno", out["errno"]) if "errno" in out else ("ok", out["ok"])

    def answer(self, **cmd: Any) -> Any:
        """What the model compares: "ok", or the errno."""
        kind, value = self.call(**cmd)
        return value if kind == "errno" else "ok"

    def stop(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=30)


def run_sequence(mount, ops: list[tuple[Any, ...]]) -> None:
    model = Model()
    procs: dict[int, Proc] = {}
    fds: list[tuple[int, int]] = []  # (pid, fd), parallel to model.handles
    root = str(mount.path)

    def proc(pid: int) -> Proc:
        if pid not in procs:
            procs[pid] = Proc(root)
        return procs[pid]

    def check(step: int, op: tuple[Any, ...], got: Any, allowed: list[Any]) -> None:
        assert got in allowed, f"step {step} {op}: got {str(got)[:60]}, the model allows {[str(a)[:60] for a in allowed]}"

    try:
        for step, op in enumerate(ops):
            kind = op[0]
            if kind in ("write", "ftruncate", "read", "flush", "fsync", "close") and not fds:
                continue
            if kind in ("write", "ftruncate") and not model.handle(op[1]).writable:
                continue
            if kind == "read" and not model.handle(op[1]).readable:
                continue
            if kind == "open":
                _, pid, path, mode = op
                allowed = model.open(pid, path, mode)
                status, value = proc(pid).call(op="open", path=path, flags=FLAGS[mode])
                if status == "ok":
                    fds.append((pid, value))
                check(step, op, "ok" if status == "ok" else value, allowed)
            else:
                idx = op[1] if kind in ("write", "ftruncate", "read", "flush", "fsync", "close") else None
                pid, fd = fds[idx % len(fds)] if idx is not None else (op[1], -1)
                p = proc(pid)
                if kind == "write":
                    allowed, off, _ = model.write(idx, op[2], op[3], op[4])
                    status, value = p.call(op="write", fd=fd, off=off, len=op[3], byte=op[4])
                    check(step, op, "ok" if status == "ok" and value == op[3] else value, allowed)
                elif kind == "ftruncate":
                    check(step, op, p.answer(op="ftruncate", fd=fd, size=op[2]), model.ftruncate(idx, op[2]))
                elif kind == "truncate":
                    check(step, op, p.answer(op="truncate", path=op[2], size=op[3]), model.truncate(pid, op[2], op[3]))
                elif kind == "read":
                    allowed = model.read(idx)
                    status, value = p.call(op="read", fd=fd)
                    got = base64.b64decode(value) if status == "ok" else value
                    check(step, op, got, allowed)
                    model.handle(idx).returned |= status == "ok" and bool(got)
                elif kind == "stat":
                    status, value = p.call(op="stat", path=op[2])
                    check(step, op, value, model.stat(pid, op[2]))
                elif kind in ("flush", "fsync", "close"):
                    allowed = model.durable(idx, final=kind != "fsync")
                    check(step, op, p.answer(op=kind, fd=fd), allowed)
                    if kind == "close":
                        model.release(idx)
                        fds.remove((pid, fd))
                elif kind == "rename":
                    check(step, op, p.answer(op="rename", src=op[2], dst=op[3]), model.rename(pid, op[2], op[3]))
                elif kind == "unlink":
                    check(step, op, p.answer(op="unlink", path=op[2]), model.unlink(pid, op[2]))
            assert_bucket(mount, model, f"after step {step} {op}")
        while fds:  # the end: every descriptor closed
            idx = len(fds) - 1
            model.durable(idx, final=True)
            pid, fd = fds.pop()
            proc(pid).answer(op="close", fd=fd)
            model.release(idx)
        assert_bucket(mount, model, "at the end")
    finally:
        for p in procs.values():
            p.stop()


def assert_bucket(mount, model: Model, when: str) -> None:
    bucket = {k: mount.bucket.get(k) for k in mount.bucket.list() if not k.endswith("/")}
    want = model.bucket()
    assert bucket == want, f"{when}: bucket {({k: len(v) for k, v in bucket.items()})} vs model {({k: len(v) for k, v in want.items()})}"


def test_random_sequences_through_a_real_mount_keep_every_promise(mount_factory, bucket):
    mount = mount_factory(bucket, extra_args=["--metadata-ttl", "0"])
    examples = [0]

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sequences(max_size=24, faults=False))
    def check(ops):
        examples[0] += 1
        for key in mount.bucket.list():
            mount.bucket.s3.client.delete_object(Bucket=mount.bucket.name, Key=mount.bucket.key(key))
        run_sequence(mount, ops)

    check()
    assert examples[0] == 30
