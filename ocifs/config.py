"""Settings of one mount, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

MiB = 1024 * 1024


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
    read_only: bool = False
    fuse_options: tuple[str, ...] = ()
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    # Chunk cache: bytes of object data kept in memory, shared by all open files.
    cache_size: int = 512 * MiB
    # Unit of ranged GETs and of the cache. 8 MiB is what mountpoint-s3 uses for its
    # parallel GETs; smaller chunks cost more per-request CPU in Python (see README: tuning).
    chunk_size: int = 8 * MiB
    # Multipart part size; S3 requires >= 5 MiB for all parts but the last.
    part_size: int = 8 * MiB
    # S3 requests in flight for the whole mount (reads and writes share it).
    concurrency: int = 16
    # Read-ahead window ceiling per open file, in bytes.
    max_readahead: int = 128 * MiB
    # Attributes of mutable files (index.json, ...) are revalidated after this many seconds.
    metadata_ttl: float = 1.0
    # Every FUSE operation that waits on S3 gives up with EIO after this many seconds.
    op_timeout: float = 300.0
    # Stream oras ingest files straight to their blob key (off: upload, then copy on rename).
    zero_copy: bool = True
    # Hash blobs read front to back and fail the last read (EIO) if the digest is wrong.
    verify_reads: bool = False
    # Persistent blob cache on local disk (ocifs.diskcache): None = off. Blobs never change,
    # so verified copies serve every later mount, and every ocifs process sharing the directory.
    disk_cache: Path | None = None
    disk_cache_size: int = 10240 * MiB  # bytes of cache files at most
    log_level: str = "info"
    log_format: str = "text"
    log_file: Path | None = None
    # Prometheus text over HTTP on HOST:PORT (opt-in); the unix socket is always there.
    metrics_addr: str | None = None
    mountpoint: Path | None = None
    # Who owns every file and directory, and the modes of those without a stored mode. The
    # kernel enforces them (default_permissions) whenever other users can reach the mount.
    uid: int | None = None  # None: the mounting user
    gid: int | None = None
    file_mode: int = 0o644
    dir_mode: int = 0o755

    @property
    def staging_dir(self) -> Path:
        return self.cache_dir / "staging"
