"""Can this process mount FUSE here, and what does the kernel's FUSE offer? Found by doing it.

/dev/fuse existing says little: in a container without CAP_SYS_ADMIN, or under an AppArmor
profile that denies mount, the device opens fine and the mount fails. And the kernel does not
publish its FUSE protocol version anywhere (not in /sys/module/fuse, not in /sys/fs/fuse):
it is in the FUSE_INIT request the kernel sends to a new mount. So :func:`probe` mounts an
empty FUSE filesystem on a temporary directory the way libfuse does for ocifs (fusermount3,
which receives the /dev/fuse descriptor back over a socket, for root and users alike), reads
that one request, and tears the mount down without answering it.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile

FUSE_INIT = 26
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header (40 bytes)
_INIT_IN = struct.Struct("<IIIII")  # major, minor, max_readahead, flags, flags2 (7.36+)
# Bits of the kernel's offer worth knowing for ocifs (include/uapi/linux/fuse.h); flags2 holds
# bits 32..63.
FEATURES = {
    "max_pages": 1 << 22,  # requests above 128 KiB (ocifs asks the kernel for 1 MiB reads)
    "parallel_dirops": 1 << 18,
    "writeback_cache": 1 << 16,
    "passthrough": 1 << 37,  # 6.9+: reads/writes served by a backing file in the kernel
    "over_io_uring": 1 << 41,  # 6.14+, only with fuse.enable_uring=1
}


class ProbeError(Exception):
    """The probe mount failed; the message is what fusermount3 or the kernel said."""


@dataclasses.dataclass(frozen=True)
class KernelFuse:
    major: int
    minor: int
    max_readahead: int
    flags: int

    @property
    def protocol(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def features(self) -> list[str]:
        return [name for name, bit in FEATURES.items() if self.flags & bit]


def parse_init(data: bytes) -> KernelFuse:
    """The kernel's FUSE_INIT request -> what it offers."""
    if len(data) < _IN_HEADER.size + 16:
        raise ProbeError(f"short FUSE_INIT request ({len(data)} bytes)")
    opcode = _IN_HEADER.unpack_from(data)[1]
    if opcode != FUSE_INIT:
        raise ProbeError(f"first FUSE request has opcode {opcode}, not FUSE_INIT")
    body = data[_IN_HEADER.size :].ljust(_INIT_IN.size, b"\0")
    major, minor, readahead, flags, flags2 = _INIT_IN.unpack_from(body)
    if minor < 36:  # no flags2 before 7.36 (the kernel sends the older, shorter struct)
        flags2 = 0
    return KernelFuse(major, minor, readahead, flags | flags2 << 32)


def probe(timeout: float = 10.0) -> KernelFuse:
    """Mount, read FUSE_INIT, unmount. Raises ProbeError with the reason a mount fails here."""
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        raise ProbeError("fusermount3 is not installed")
    mnt = tempfile.mkdtemp(prefix="ocifs-doctor-")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        opts = "rw,nosuid,nodev,fsname=ocifs-doctor,subtype=ocifs-doctor"
        res = subprocess.run(
            [fusermount, "-o", opts, "--", mnt], env=env, pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
        theirs.close()
        if res.returncode != 0:
            lines = (res.stderr or res.stdout).strip().splitlines() or [f"fusermount3 exited {res.returncode}"]
            raise ProbeError(lines[-1].removeprefix(f"{fusermount}: ").removeprefix("fusermount3: "))
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise ProbeError("fusermount3 mounted but sent no /dev/fuse descriptor back")
        try:
            return _read_init(fds[0], timeout)
        finally:
            os.close(fds[0])  # aborts the connection: nothing can hang on the unanswered INIT
            subprocess.run([fusermount, "-u", "-z", "--", mnt], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(str(exc)) from None
    finally:
        ours.close()
        theirs.close()
        try:
            os.rmdir(mnt)
        except OSError:
            pass


def _read_init(fd: int, timeout: float) -> KernelFuse:
    if not select.select([fd], [], [], timeout)[0]:
        raise ProbeError(f"the kernel sent no FUSE_INIT within {timeout:.0f} s")
    # The kernel refuses reads into buffers smaller than a whole request may be.
    return parse_init(os.read(fd, (1 << 20) + 4096))
