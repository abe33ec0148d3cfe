"""The settings of one mount (or one ``ocifs ls/gc/fsck/doctor`` run), in one frozen dataclass.

Defaults come from the one table in :mod:`ocifs.settings` (sizes there in MiB, here in bytes),
so flags, ``OCIFS_*`` variables, TOML keys, ``--print-config`` and this class never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ocifs.settings import MiB, SettingsError, default, parse_s3_url

__all__ = ["Config", "MiB", "default_cache_dir", "from_values", "for_bucket"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocifs"


@dataclasses.dataclass(frozen=True)
class Config:
    bucket: str
    prefix: str = ""  # "" or "some/prefix/" (always ends with "/")
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    read_only: bool = default("read_only")
    fuse_options: tuple[str, ...] = ()
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    # Chunk cache: bytes of object data kept in memory, shared by all open files.
    cache_size: int = default("cache_size")
    # Unit of ranged GETs and of the cache. 8 MiB is what mountpoint-s3 uses for its
    # parallel GETs; smaller chunks cost more per-request CPU in Python (see README: tuning).
    chunk_size: int = default("chunk_size")
    # Multipart part size; S3 requires >= 5 MiB for all parts but the last.
    part_size: int = default("part_size")
    # S3 requests in flight for the whole mount (reads and writes share it).
    concurrency: int = default("concurrency")
    # Read-ahead window ceiling per open file, in bytes.
    max_readahead: int = default("max_readahead")
    # Attributes of mutable files (index.json, ...) are revalidated after this many seconds.
    metadata_ttl: float = default("metadata_ttl")
    # Every FUSE operation that waits on S3 gives up with EIO after this many seconds.
    op_timeout: float = default("op_timeout")
    # Stream oras ingest files straight to their blob key (off: upload, then copy on rename).
    zero_copy: bool = default("zero_copy")
    # Hash blobs read front to back and fail the last read (EIO) if the digest is wrong.
    verify_reads: bool = default("verify_reads")
    # Persistent blob cache on local disk (ocifs.diskcache): None = off. Blobs never change,
    # so verified copies serve every later mount, and every ocifs process sharing the directory.
    disk_cache: Path | None = None
    disk_cache_size: int = default("disk_cache_size")  # bytes of cache files at most
    log_level: str = default("log_level")
    log_format: str = default("log_format")
    log_file: Path | None = None
    # Prometheus text over HTTP on HOST:PORT (opt-in); the unix socket is always there.
    metrics_addr: str | None = None
    mountpoint: Path | None = None
    # Who owns every file and directory, and the modes of those without a stored mode. The
    # kernel enforces them (default_permissions) whenever other users can reach the mount.
    uid: int | None = None  # None: the mounting user
    gid: int | None = None
    file_mode: int = int(default("file_mode"))
    dir_mode: int = int(default("dir_mode"))

    @property
    def staging_dir(self) -> Path:
        return self.cache_dir / "staging"


def _endpoint_and_region(values: Mapping[str, Any]) -> tuple[str | None, str | None]:
    endpoint = values.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not re.match(r"^https?://[^/]+", endpoint):
        raise SettingsError(f"endpoint_url must be http(s)://HOST[:PORT], got {endpoint!r}")
    region = values.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and endpoint:
        region = "us-east-1"
    return endpoint, region


def for_bucket(url: str, values: Mapping[str, Any]) -> Config:
    """The settings of a bucket-level command (ls, gc, fsck, doctor): the same endpoint,
    region and credentials resolution as a mount (flags > OCIFS_* > --config > defaults)."""
    bucket, prefix = parse_s3_url(url)
    endpoint, region = _endpoint_and_region(values)
    return Config(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=region,
        profile=values.get("profile"),
        concurrency=values.get("concurrency") or default("concurrency"),
    )


def from_values(values: Mapping[str, Any]) -> Config:
    """A mount's Config from resolved settings (:func:`ocifs.settings.resolve`)."""
    if not values.get("url"):
        raise SettingsError("no s3://BUCKET[/PREFIX] given (argument, OCIFS_URL or 'url' in the config file)")
    if not values.get("mountpoint"):
        raise SettingsError("no mountpoint given (argument, OCIFS_MOUNTPOINT or 'mountpoint' in the config file)")
    bucket, prefix = parse_s3_url(values["url"])
    mountpoint = Path(os.path.abspath(values["mountpoint"]))
    endpoint, region = _endpoint_and_region(values)
    metrics = values.get("metrics_addr")
    if metrics and not re.match(r"^[\w.\-\[\]:]+:\d+$", metrics):
        raise SettingsError(f"metrics_addr must be HOST:PORT, got {metrics!r}")
    cache_dir = values["cache_dir"] or default_cache_dir() / hashlib.sha1(str(mountpoint).encode()).hexdigest()[:12]
    return Config(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=region,
        profile=values["profile"],
        read_only=values["read_only"],
        fuse_options=tuple(values["options"]),
        cache_dir=Path(cache_dir).resolve(),
        cache_size=values["cache_size"] * MiB,
        chunk_size=values["chunk_size"] * MiB,
        part_size=values["part_size"] * MiB,
        concurrency=values["concurrency"],
        max_readahead=values["max_readahead"] * MiB,
        metadata_ttl=values["metadata_ttl"],
        op_timeout=values["op_timeout"],
        zero_copy=values["zero_copy"],
        verify_reads=values["verify_reads"],
        disk_cache=Path(values["disk_cache"]).resolve() if values["disk_cache"] else None,
        disk_cache_size=values["disk_cache_size"] * MiB,
        log_level=values["log_level"],
        log_format=values["log_format"],
        log_file=values["log_file"],
        metrics_addr=metrics,
        mountpoint=mountpoint,
        uid=values["uid"],
        gid=values["gid"],
        file_mode=int(values["file_mode"]),
        dir_mode=int(values["dir_mode"]),
    )
