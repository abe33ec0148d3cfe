"""Command line: ``ocifs mount`` and ``ocifs umount``.

Every user-facing failure is one line on stderr and a non-zero exit; tracebacks go to the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from ocifs import __version__, config, errors, settings, store
from ocifs.config import Config

log = logging.getLogger("ocifs")

class UsageError(Exception):
    pass


def _positive(kind: type, minimum: float = 0) -> object:
    def conv(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return conv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        raise UsageError(message)


def _s3_args(p: argparse.ArgumentParser) -> None:
    """Endpoint, region and credentials of a bucket-level command: resolved like a mount's
    (flags > OCIFS_* environment > --config file > defaults)."""
    for name in ("endpoint_url", "region", "profile", "concurrency"):
        s = settings.BY_NAME[name]
        p.add_argument(s.flag, dest=name, default=None, metavar=s.metavar, help=s.help)
    p.add_argument("--config", type=Path, default=os.environ.get("OCIFS_CONFIG"), metavar="FILE", help="TOML file of settings (the same as ocifs mount --config)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ocifs", description="Mount an S3 bucket as a directory of OCI image layouts.")
    p.add_argument("--version", action="version", version=f"ocifs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser(
        "mount",
        help="mount s3://BUCKET[/PREFIX] on MOUNTPOINT",
        description="Mount s3://BUCKET[/PREFIX] on MOUNTPOINT. Credentials come from botocore's "
        "usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile, instance roles).",
    )
    m.add_argument("url", nargs="?", help="s3://BUCKET[/PREFIX] (or 'url' in --config / $OCIFS_URL)")
    m.add_argument("mountpoint", nargs="?", type=Path, help="mount point (or 'mountpoint' in --config / $OCIFS_MOUNTPOINT)")
    m.add_argument("--config", type=Path, default=os.environ.get("OCIFS_CONFIG"), metavar="FILE", help="TOML file of settings (precedence: flags > OCIFS_* env > file > defaults)")
    m.add_argument("--print-config", action="store_true", help="print the effective settings and where each came from, then exit")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground (default: return once mounted)")
    settings.add_flags(m)
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    u = sub.add_parser("umount", help="flush pending uploads and unmount", description="Unmount MOUNTPOINT after pending uploads are published.")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("--timeout", type=_positive(float, 1), default=600.0, metavar="SECONDS", help="wait this long for the daemon (default 600)")
    ls = sub.add_parser("ls", help="list the layouts (repos) in a bucket and their tags", description="List the OCI layouts under s3://BUCKET[/PREFIX] and their tags (no mount needed).")
    ls.add_argument("url", help="s3://BUCKET[/PREFIX]")
    _s3_args(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    g = sub.add_parser(
        "gc",
        help="delete unreachable blobs (mark now, sweep after --grace)",
        description="Two phases, safe with pushes in flight through ocifs mounts on any host: each run "
        "condemns the blobs nothing in index.json reaches (manifests, indexes, configs, layers, subjects, "
        "referrers) in a mark under PREFIX/.ocifs/gc/, and deletes the blobs of marks older than --grace "
        "that are still unreachable and that no mount has kept since (a mount keeps a condemned blob "
        "when a client checks it or publishes it). Run it periodically (cron). --grace 0 marks and "
        "sweeps in one run: UNSAFE while anything writes to the bucket.",
    )
    g.add_argument("url", help="s3://BUCKET[/PREFIX]")
    _s3_args(g)
    g.add_argument("--grace", type=_positive(float, 0), default=3600.0, metavar="SECONDS", help="sweep marks at least this old; longer than your longest push (default 3600; 0: mark and sweep now, unsafe with concurrent writers)")
    g.add_argument("--dry-run", action="store_true", help="write nothing; show what would be condemned and what would be deleted")

    f = sub.add_parser("fsck", help="check blob digests, references and leftovers", description="Check every blob's digest, dangling references, stale temporary files (ingest/, .uploads/, oci-put-blob*, .umoci-*) and incomplete multipart uploads. Exit 1 if problems remain.")
    f.add_argument("url", help="s3://BUCKET[/PREFIX]")
    _s3_args(f)
    f.add_argument("--grace", type=_positive(float, 0), default=3600.0, metavar="SECONDS", help="temporary files and multipart uploads active this recently are in use (default 3600)")
    f.add_argument("--repair", action="store_true", help="remove corrupt blobs, stale leftovers and multipart uploads with no part for --grace seconds")

    d = sub.add_parser("doctor", help="check FUSE, credentials, endpoint and bucket permissions", description="Check what a mount needs, for real: /dev/fuse, fusermount3, a probe FUSE mount (and the kernel's FUSE protocol), allow_other; with s3://BUCKET[/PREFIX] also the credentials and where they come from, the endpoint and clock skew, and every kind of request a mount makes, on temporary keys under PREFIX.ocifs-doctor-* that are removed afterwards. Prints a table with a fix for each failure; exit 1 if anything failed.")
    d.add_argument("url", nargs="?", help="s3://BUCKET[/PREFIX] to check (without it: only this machine)")
    _s3_args(d)
    d.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]", help="FUSE options the mount will use (checks allow_other)")
    d.add_argument("--read-only", action="store_true", help="the mount will be --read-only: do not check writes")

    st = sub.add_parser("stats", help="print a mount's live counters", description="Print the live counters of the ocifs mount at MOUNTPOINT (Prometheus text).")
    st.add_argument("mountpoint", type=Path)
    st.add_argument("--watch", action="store_true", help="refresh every --interval seconds, with rates")
    st.add_argument("--interval", type=_positive(float, 0.1), default=1.0, metavar="SECONDS")
    return p


def tool_config(a: argparse.Namespace) -> Config:
    flags = {k: getattr(a, k) for k in ("endpoint_url", "region", "profile", "concurrency")}
    try:
        values, _ = settings.resolve(flags, os.environ, a.config)
        return config.for_bucket(a.url, values)
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None


def cmd_tool(a: argparse.Namespace) -> int:
    from ocifs import tools

    cfg = tool_config(a)
    if a.command == "ls":
        return tools.ls(cfg, a.json)
    if a.command == "gc":
        return tools.gc(cfg, a.grace, a.dry_run)
    return tools.fsck(cfg, a.grace, a.repair)


def cmd_doctor(a: argparse.Namespace) -> int:
    from ocifs import doctor

    cfg = tool_config(a) if a.url else None
    options = [o for arg in a.options for o in arg.split(",") if o]
    return doctor.run(cfg, options, a.read_only)


def config_from_args(a: argparse.Namespace) -> tuple[dict[str, object], str]:
    flags = {k: v for k, v in vars(a).items() if k in settings.BY_NAME}
    flags["url"], flags["mountpoint"] = a.url, a.mountpoint
    try:
        values, sources = settings.resolve(flags, os.environ, a.config)
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None
    return values, settings.render(values, sources)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        out = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def open_log(path: Path, mode: str = "ab") -> IO[Any]:
    """Open a log file for appending, never through a symlink: the default log lives in
    --cache-dir, which may be a directory others can write (``--cache-dir /tmp``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise errors.OcifsError(f"cannot open log file {path}: {exc.strerror}") from None
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "buffering": 1}))


def setup_logging(level: str, log_file: Path | None, fmt: str = "text") -> None:
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.StreamHandler(open_log(log_file, "a"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def cmd_mount(a: argparse.Namespace) -> int:
    from ocifs import runtime

    values, rendered = config_from_args(a)
    if a.print_config:
        sys.stdout.write(rendered)
        return 0
    try:
        cfg = config.from_values(values)
    except settings.SettingsError as exc:
        raise UsageError(str(exc)) from None
    assert cfg.mountpoint is not None
    mountpoint = cfg.mountpoint
    runtime.check_fuse_options(cfg.fuse_options)
    if a.ready_fd is None:  # the daemon's parent checked this already
        runtime.check_mountpoint(mountpoint)
    if not a.foreground:
        return _spawn_daemon(a, cfg, mountpoint)
    setup_logging(cfg.log_level, cfg.log_file, cfg.log_format)
    from ocifs import mount

    try:
        mount.run(cfg, mountpoint, a.ready_fd)
    except errors.OcifsError as exc:
        if a.ready_fd is not None:
            os.write(a.ready_fd, f"ERR {exc}\n".encode())
        raise
    return 0


def _spawn_daemon(a: argparse.Namespace, cfg: Config, mountpoint: Path) -> int:
    """Start the daemon and wait until it reports the mount ready (or why it failed)."""
    log_file = cfg.log_file or (cfg.cache_dir / "ocifs.log")
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    r, w = os.pipe()
    argv = daemon_command() + _daemon_argv(a.argv) + ["--foreground", "--ready-fd", str(w)]
    argv += ["--log-file", str(log_file)] if a.log_file is None else []
    with open(os.devnull, "rb") as devnull, open_log(log_file) as logf:
        proc = subprocess.Popen(
            argv, stdin=devnull, stdout=logf, stderr=logf, pass_fds=(w,), start_new_session=True, close_fds=True
        )
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "OK":
        return 0
    proc.wait(timeout=30)
    if line.startswith("ERR "):
        raise errors.OcifsError(line[4:])
    raise errors.OcifsError(f"the mount daemon exited ({proc.returncode}) before the mount was ready; see {log_file}")


def daemon_command() -> list[str]:
    """How to start this ocifs again as the mount daemon.

    ``python -m ocifs`` alone would put the current directory first on sys.path: an
    ``./ocifs`` directory (a mountpoint named ocifs, or a planted ``ocifs/__main__.py`` in a
    directory others can write, run as root) would be imported instead of ocifs. ``-P``
    (Python 3.11+) leaves it out and changes nothing else: site-packages (with its editable
    install hooks), the user site and PYTHONPATH still find the ocifs this process runs.
    """
    return [sys.executable, "-P", "-m", "ocifs"]


def _daemon_argv(argv: list[str]) -> list[str]:
    """The user's arguments minus the ones the parent handles itself."""
    out = []
    for x in argv:
        if x in ("-f", "--foreground"):
            continue
        out.append(x)
    return out


def cmd_umount(a: argparse.Namespace) -> int:
    from ocifs import runtime

    runtime.unmount(Path(os.path.abspath(a.mountpoint)), a.timeout)
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    import time

    from ocifs import metrics, runtime

    sock = runtime.stats_socket(Path(os.path.abspath(a.mountpoint)))
    try:
        text = metrics.fetch(sock)
    except OSError as exc:
        raise errors.OcifsError(f"no ocifs mount answers at {a.mountpoint} ({exc.strerror or exc})") from None
    if not a.watch:
        sys.stdout.write(text)
        return 0
    prev, t_prev = metrics.parse(text), time.monotonic()
    while True:
        time.sleep(a.interval)
        cur, now = metrics.parse(metrics.fetch(sock)), time.monotonic()
        dt = now - t_prev
        lines = [time.strftime("%H:%M:%S")]
        for name in sorted(cur):
            rate = (cur[name] - prev.get(name, 0)) / dt
            extra = f"  ({rate:,.1f}/s)" if "total" in name and rate else ""
            lines.append(f"  {name} {cur[name]:,.0f}{extra}")
        sys.stdout.write("\x1b[2J\x1b[H" + "\n".join(lines) + "\n" if sys.stdout.isatty() else "\n".join(lines) + "\n")
        sys.stdout.flush()
        prev, t_prev = cur, now


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        a = build_parser().parse_args(argv)
        a.argv = argv
        if a.command == "mount":
            return cmd_mount(a)
        if a.command == "stats":
            return cmd_stats(a)
        if a.command in ("ls", "gc", "fsck"):
            return cmd_tool(a)
        if a.command == "doctor":
            return cmd_doctor(a)
        return cmd_umount(a)
    except UsageError as exc:
        print(f"ocifs: {exc}", file=sys.stderr)
        return 2
    except (errors.OcifsError, store.StoreError) as exc:
        print(f"ocifs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ocifs: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback to the user
        logging.getLogger("ocifs").debug("unexpected error", exc_info=True)
        print(f"ocifs: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
