"""Running a mount: the daemon's life from the S3 check to the last flushed upload."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from ocifs import errors, metrics
from ocifs.cachedir import prepare_cache_dir
from ocifs.config import Config
from ocifs.fs import Operations
from ocifs.gcmarks import GcMarks, GuardedStore
from ocifs.runtime import check_fuse_options, mounted_paths, pid_file, stats_socket
from ocifs.s3 import S3

log = logging.getLogger(__name__)

# Kernel read-ahead for the mount, in KiB. The default (128 KiB) makes the kernel send 128 KiB
# reads; from 1 MiB on it sends 1 MiB requests (FUSE's largest), which Python serves with ~8x
# fewer round trips (see README, "Tuning"). A window of several of them keeps that many READs in
# flight (up to FUSE's 12 background requests), so the FUSE thread answers the next ones while
# the client consumes: cold `oras pull` of 1 GiB, cloud profile, 3 interleaved runs each
# (python -m bench.ab ... --workloads pull-cold): 1 MiB 13.08 s, 4 MiB 5.94 s, 16 MiB 5.37 s.
READ_AHEAD_KB = 16384
# Seconds between malloc_trim calls (see _trim_malloc).
MALLOC_TRIM_INTERVAL = 2.0


def fuse_options(cfg: Config) -> set[str]:
    """The options pyfuse3 mounts with.

    Whenever other users can reach the mount (allow_other, allow_root), the kernel checks
    permissions itself (default_permissions) against the owner and modes ocifs reports
    (--uid, --gid, --file-mode, --dir-mode, stored modes). Without it every local user could
    read, write and delete with the mount's S3 credentials.
    """
    opts = {f"fsname=s3://{cfg.bucket}/{cfg.prefix}".rstrip("/"), "subtype=ocifs"}
    if cfg.read_only:
        opts.add("ro")
    opts.update(cfg.fuse_options)
    if opts & {"allow_other", "allow_root"}:
        opts.add("default_permissions")
    return opts


def tune_kernel(mountpoint: Path) -> None:
    st = os.stat(mountpoint)
    bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    try:
        bdi.write_text(str(READ_AHEAD_KB))
        log.debug("set %s to %d", bdi, READ_AHEAD_KB)
    except OSError as exc:
        log.info("could not raise kernel read-ahead (%s): %s", bdi, exc.strerror)


async def _trim_malloc() -> None:
    """Every few seconds, hand the heap's free pages back to the OS (glibc malloc_trim): the
    heap keeps chunk buffers for reuse, this keeps RSS near what is really in use."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await trio.sleep(MALLOC_TRIM_INTERVAL)
        trim(0)


def tune_malloc() -> None:
    """Keep chunk buffers on the heap, where freed ones are reused.

    glibc maps every allocation above a (dynamic) threshold with mmap and unmaps it on free, so
    each new 8 MiB chunk buffer would start as fresh pages: 2,048 page faults and a zeroing
    pass per GET (py-spy showed `bytearray(want)` as a third of the daemon's time on a cold
    read). A fixed 32 MiB threshold keeps chunk buffers on the heap; their memory is bounded
    by --cache-size anyway.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        # Two arenas: chunk buffers are allocated on the S3 thread and freed on the FUSE
        # thread; per-thread arenas would each keep their own high-water mark.
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def run(cfg: Config, mountpoint: Path, ready_fd: int | None = None) -> None:
    """Mount and serve until unmounted or signalled. Raises OcifsError on startup problems."""
    tune_malloc()
    check_fuse_options(cfg.fuse_options)
    s3 = S3(cfg)
    try:
        s3.open_blocking()
        s3.check_bucket_blocking()
        s3.open_data_plane_blocking()  # after the bucket answered: its probe then is quick
        prepare_cache_dir(cfg)
        # gc: keeps for condemned blobs on lookup and on publish (a read-only mount has no
        # clients that could reuse one). slack: how far Node.fetched may lag its HEAD/LIST.
        marks = None if cfg.read_only else GcMarks(s3, cfg.metadata_ttl, slack=75.0 + cfg.metadata_ttl)
        ops = Operations(cfg, s3 if marks is None else GuardedStore(s3, marks))
        ops.ns.gc_marks = marks
        if ops.disk is not None:
            ops.disk.prepare()  # before mounting: a bad --disk-cache is a one-line error
        try:
            pyfuse3.init(ops, str(mountpoint), fuse_options(cfg))
        except RuntimeError as exc:
            raise errors.OcifsError(f"cannot mount on {mountpoint}: {exc}") from None
        pidf = pid_file(mountpoint)
        pidf.write_text(str(os.getpid()))
        unmounted = False
        try:
            trio.run(_serve, ops, s3, cfg, mountpoint, ready_fd)
            unmounted = str(mountpoint) not in mounted_paths()
        finally:
            pyfuse3.close(unmount=not unmounted)
            pidf.unlink(missing_ok=True)
    finally:
        s3.close_blocking()
    log.info("unmounted %s", mountpoint)


async def _serve(ops: Operations, s3: S3, cfg: Config, mountpoint: Path, ready_fd: int | None) -> None:
    s3.limiter = trio.CapacityLimiter(cfg.concurrency)
    async with trio.open_nursery() as nursery:
        await ops.start(nursery)
        if not cfg.read_only:
            with trio.move_on_after(60):
                await ops.publisher.probe_conditional_writes()
            if ops.publisher.writes_denied:
                ops.ns.gc_marks = None  # cannot write keeps, and its clients cannot push
        nursery.start_soon(_on_signals, ops)
        nursery.start_soon(_trim_malloc)
        nursery.start_soon(metrics.serve, stats_socket(mountpoint), ops.counters)
        if cfg.metrics_addr:
            nursery.start_soon(metrics.serve_http, cfg.metrics_addr, ops.counters)
        nursery.start_soon(_announce_ready, mountpoint, ready_fd)
        try:
            await pyfuse3.main()
        except Exception:
            # pyfuse3 ends its loop on an exception an operation let through; fs.fuse_op lets
            # none, so this is a bug: say so loudly, then unmount cleanly.
            log.exception("the FUSE loop failed")
        log.info("FUSE loop ended: finishing publishes in flight; files still open for writing are not published")
        await ops.shutdown()
        nursery.cancel_scope.cancel()


async def _on_signals(ops: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("got %s: unmounting once closes in flight have published", signal.Signals(sig).name)
            _notify_systemd(b"STOPPING=1")
            await ops.files.drain(ops.cfg.op_timeout)
            pyfuse3.terminate()
            return


async def _announce_ready(mountpoint: Path, ready_fd: int | None) -> None:
    await trio.to_thread.run_sync(tune_kernel, mountpoint)
    log.info("mounted on %s", mountpoint)
    if ready_fd is not None:
        os.write(ready_fd, b"OK\n")
        os.close(ready_fd)
    _notify_systemd()


def _notify_systemd(message: bytes = b"READY=1") -> None:
    """Tell systemd (Type=notify) that the mount answers, if we run under it."""
    sock = os.environ.get("NOTIFY_SOCKET")
    if not sock:
        return
    import socket

    addr = "\0" + sock[1:] if sock.startswith("@") else sock
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


