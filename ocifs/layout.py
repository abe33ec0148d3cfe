"""What names mean in an OCI image layout, and the mapping between POSIX names and S3 keys."""

from __future__ import annotations

import re

# blobs/<alg>/<hex>: content-addressed, so immutable once committed.
_BLOB_RE = re.compile(r"(?:^|/)blobs/(sha256/[0-9a-f]{64}|sha512/[0-9a-f]{128})$")
# oras-go writes a blob to <layout>/ingest/<hex>_<random digits> (os.CreateTemp(ingest,
# hex+"_*")) and renames it to <layout>/blobs/<alg>/<hex>: the final name is in the temp name.
_INGEST_RE = re.compile(r"^(?:(.*)/)?ingest/([0-9a-f]{64}|[0-9a-f]{128})_[0-9]+$")
_HEX_ALG = {64: "sha256", 128: "sha512"}

NAME_MAX = 255


def is_blob_path(path: str) -> bool:
    """True for ``.../blobs/sha256/<64 hex>`` and ``.../blobs/sha512/<128 hex>``."""
    return _BLOB_RE.search(path) is not None


def blob_digest(path: str) -> tuple[str, str] | None:
    """(alg, hex) for a blob path, else None."""
    m = _BLOB_RE.search(path)
    if m is None:
        return None
    alg, _, hexd = m.group(1).partition("/")
    return alg, hexd


def ingest_target(path: str) -> str | None:
    """The blob path an oras ingest file is destined for (``None`` for other paths)."""
    m = _INGEST_RE.match(path)
    if m is None:
        return None
    root, hexd = m.group(1), m.group(2)
    blob = f"blobs/{_HEX_ALG[len(hexd)]}/{hexd}"
    return f"{root}/{blob}" if root else blob


def is_index(path: str) -> bool:
    """An OCI layout's ``index.json``: rewritten in place, merged on conflict."""
    return path == "index.json" or path.endswith("/index.json")


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def basename(path: str) -> str:
    return path.rpartition("/")[2]


# ocifs's own bookkeeping under the mounted prefix (gc marks): never shown in the mount.
RESERVED_TOP = ".ocifs"


def hidden_reason(name: str, top_level: bool = False) -> str | None:
    """Why an S3 key segment cannot be shown as a POSIX name (None if it can).

    The rule (README, "Object keys that are not POSIX names"): such keys are hidden from the
    mount and a warning is logged once per key; they are never renamed or rewritten.
    """
    if top_level and name == RESERVED_TOP:
        return "reserved for ocifs's own bookkeeping"
    if name == "":
        return "empty path segment (a '//' in the key)"
    if name in (".", ".."):
        return f"'{name}' path segment"
    if "\0" in name:
        return "NUL byte in the name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    return None


# S3 keys are at most 1,024 bytes of UTF-8.
KEY_MAX = 1024


def name_to_str(name: bytes) -> str:
    """A FUSE name (bytes) as the str used in keys; only UTF-8 names can become S3 keys."""
    from ocifs import errors

    if len(name) > NAME_MAX:
        raise errors.NameTooLong(f"name of {len(name)} bytes (at most {NAME_MAX})")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidName(f"name {name!r} is not UTF-8; S3 keys must be") from None


def check_key(key: str) -> None:
    """A key S3 can store (ENAMETOOLONG otherwise: the path is too long for an object key)."""
    if len(key.encode("utf-8", "surrogateescape")) > KEY_MAX:
        from ocifs import errors

        raise errors.NameTooLong(f"the object key would be longer than {KEY_MAX} bytes")
