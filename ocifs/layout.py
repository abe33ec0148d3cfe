"""What names mean in an OCI image layout, and the mapping between POSIX names and S3 keys."""

from __future__ import annotations

import re

# blobs/<alg>/<hex>: content-addressed, so immutable once committed.
_BLOB_RE = re.compile(r"(?:^|/)blobs/(sha256/[0-9a-f]{64}|sha512/[0-9a-f]{128})$")

NAME_MAX = 255


def is_blob_path(path: str) -> bool:
    """True for ``.../blobs/sha256/<64 hex>`` and ``.../blobs/sha512/<128 hex>``."""
    return _BLOB_RE.search(path) is not None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def hidden_reason(name: str) -> str | None:
    """Why an S3 key segment cannot be shown as a POSIX name (None if it can).

    The rule (README, "Object keys that are not POSIX names"): such keys are hidden from the
    mount and a warning is logged once per key; they are never renamed or rewritten.
    """
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


def name_to_str(name: bytes) -> str:
    """A FUSE name (bytes) as the str used in keys; only UTF-8 names can become S3 keys."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        from ocifs.errors import InvalidName

        raise InvalidName(f"name {name!r} is not UTF-8; S3 keys must be") from None
