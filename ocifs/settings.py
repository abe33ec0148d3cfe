"""Where a mount's settings come from: flags > environment (``OCIFS_*``) > config file > defaults.

One table (:data:`SETTINGS`) drives the command-line flags, the ``OCIFS_<NAME>`` environment
variables, the TOML keys and ``ocifs mount --print-config``, so the four never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


ENV_PREFIX = "OCIFS_"
MiB = 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{2,62}$")


class SettingsError(Exception):
    """A bad value in a flag, an environment variable or the config file (one line)."""


class Octal(int):
    """A file mode, written in octal everywhere a user sees it (flags, env, TOML, --print-config)."""

    @classmethod
    def parse(cls, value: Any) -> "Octal":
        if isinstance(value, int):  # a TOML integer (write 0o644), taken as it is
            return cls(value)
        text = str(value).strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ValueError(value)
        return cls(int(text, 8))

    def __str__(self) -> str:
        return f"0{int(self):o}"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # TOML key; flag is --name-with-dashes; env is OCIFS_NAME
    kind: type  # str, int, float, bool, Path, list
    default: Any
    help: str
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    scale: int = 1  # a value in MiB is MiB * bytes in ocifs.config.Config

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("url", str, None, "s3://BUCKET[/PREFIX] to mount", "S3_URL"),
    Setting("mountpoint", Path, None, "where to mount it", "DIR"),
    Setting("endpoint_url", str, None, "S3 endpoint (MinIO, R2, ...); default: AWS", "URL"),
    Setting("region", str, None, "region (default: botocore's; us-east-1 with an endpoint)"),
    Setting("profile", str, None, "AWS profile for credentials"),
    Setting("read_only", bool, False, "refuse every write with EROFS"),
    Setting("options", list, [], "FUSE mount options, e.g. allow_other", "OPT[,OPT]"),
    Setting("cache_dir", Path, None, "staging and log directory (default ~/.cache/ocifs/<mount hash>)", "DIR"),
    Setting("cache_size", int, 512, "MiB of memory for cached chunks", "MIB", 16, scale=MiB),
    Setting("chunk_size", int, 8, "MiB per ranged GET and cache chunk", "MIB", 1, 1024, scale=MiB),
    Setting("part_size", int, 8, "MiB per multipart upload part (min 5)", "MIB", 5, 5120, scale=MiB),
    Setting("concurrency", int, 16, "S3 requests in flight for the whole mount", "N", 1, 1024),
    Setting("max_readahead", int, 128, "MiB of read-ahead per open file at most", "MIB", 1, scale=MiB),
    Setting("metadata_ttl", float, 1.0, "seconds before attributes of mutable files are revalidated", "SECONDS", 0),
    Setting("op_timeout", float, 300.0, "seconds a FUSE operation may wait on S3 before EIO", "SECONDS", 1),
    Setting("zero_copy", bool, True, "stream oras ingest files straight to their blob key"),
    Setting("verify_reads", bool, False, "check blob digests when read front to back (EIO on mismatch)"),
    Setting("disk_cache", Path, None, "keep verified blobs in DIR across mounts and reboots, shared by every mount using it (default: off)", "DIR"),
    Setting("disk_cache_size", int, 10240, "MiB of disk for --disk-cache at most (least recently used blobs go first)", "MIB", 1, scale=MiB),
    Setting("log_level", str, "info", "log level", None, choices=("debug", "info", "warning", "error")),
    Setting("log_format", str, "text", "log format", None, choices=("text", "json")),
    Setting("log_file", Path, None, "log file (default: stderr in foreground, <cache-dir>/ocifs.log otherwise)", "FILE"),
    Setting("metrics_addr", str, None, "also serve Prometheus metrics over HTTP on HOST:PORT (e.g. 127.0.0.1:9877)", "HOST:PORT"),
    Setting("uid", int, None, "owner of every file and directory (default: the mounting user)", "UID", 0, 2**32 - 2),
    Setting("gid", int, None, "group of every file and directory (default: the mounting user's)", "GID", 0, 2**32 - 2),
    Setting("file_mode", Octal, Octal(0o644), "mode of files with no stored mode (octal)", "MODE", 0, 0o7777),
    Setting("dir_mode", Octal, Octal(0o755), "mode of directories (octal)", "MODE", 0, 0o7777),
)
BY_NAME = {s.name: s for s in SETTINGS}


def convert(s: Setting, value: Any, where: str) -> Any:
    """Check and convert one value from any source."""
    try:
        if s.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if s.kind is list:
            items = value if isinstance(value, list) else str(value).split(",")
            return [str(x).strip() for x in items if str(x).strip()]
        if s.kind is Path:
            return Path(os.path.expanduser(str(value)))
        if s.kind in (int, float, Octal):
            what = {int: "a whole number", float: "a number", Octal: "an octal mode like 0644"}[s.kind]
            if isinstance(value, bool):
                raise ValueError(f"expected {what}, got {value!r}")
            try:
                v = Octal.parse(value) if s.kind is Octal else s.kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"expected {what}, got {value!r}") from None
            if s.minimum is not None and v < s.minimum:
                raise ValueError(f"must be at least {s.minimum:g}")
            if s.maximum is not None and v > s.maximum:
                raise ValueError(f"must be at most {s.maximum:g}")
            return v
        v = str(value)
        if s.choices and v not in s.choices:
            raise ValueError(f"must be one of {', '.join(s.choices)}")
        return v
    except ValueError as exc:
        raise SettingsError(f"{s.name} ({where}): {exc}") from None


def add_flags(p: argparse.ArgumentParser) -> None:
    """Every setting as a flag whose default is None, so unset flags are visible."""
    for s in SETTINGS:
        if s.name in ("url", "mountpoint"):
            continue
        if s.kind is bool:
            p.add_argument(s.flag, dest=s.name, action="store_const", const=True, default=None, help=s.help)
            p.add_argument("--no-" + s.flag[2:], dest=s.name, action="store_const", const=False, help=argparse.SUPPRESS)
        elif s.kind is list:
            p.add_argument("-o", dest=s.name, action="append", default=None, metavar=s.metavar, help=s.help)
        else:
            p.add_argument(s.flag, dest=s.name, default=None, metavar=s.metavar, choices=s.choices, help=f"{s.help} (default {s.default})" if s.default is not None else s.help)


def read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror}") from None
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise SettingsError(f"config file {path}: unknown setting {unknown[0]!r}")
    return data


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Effective values and where each came from ("default", "file", "env", "flag")."""
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}
    if config_file is not None:
        for k, v in read_file(config_file).items():
            values[k] = convert(BY_NAME[k], v, str(config_file))
            sources[k] = f"file {config_file}"
    for s in SETTINGS:
        if s.env in env:
            values[s.name] = convert(s, env[s.env], f"${s.env}")
            sources[s.name] = f"env {s.env}"
    for s in SETTINGS:
        v = flags.get(s.name)
        if v is None:
            continue
        if s.kind is list:
            v = [x for item in v for x in str(item).split(",") if x]
        values[s.name] = convert(s, v, f"{s.flag} / -o {s.name}=")
        sources[s.name] = "flag"
    return values, sources


def default(name: str) -> Any:
    """A setting's default as ocifs.config.Config holds it (sizes in bytes)."""
    s = BY_NAME[name]
    return s.default * s.scale if s.default is not None and s.scale != 1 else s.default


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix ending in '/' or '')."""
    if not url.startswith("s3://"):
        raise SettingsError(f"expected s3://BUCKET[/PREFIX], got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise SettingsError(f"invalid bucket name {bucket!r} in {url!r}")
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise SettingsError(f"prefix {prefix!r} has an empty path segment")
    return bucket, prefix + "/" if prefix else ""


def render(values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """TOML a config file can take back, each line saying where its value came from."""
    lines = []
    for s in SETTINGS:
        v = values[s.name]
        if v is None:
            lines.append(f"# {s.name} = (unset)  # {sources[s.name]}")
            continue
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, Octal):
            text = f'"{v}"'
        elif isinstance(v, (int, float)):
            text = f"{v}"
        elif isinstance(v, list):
            text = "[" + ", ".join(f'"{x}"' for x in v) + "]"
        else:
            text = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{s.name} = {text}  # {sources[s.name]}")
    return "\n".join(lines) + "\n"
