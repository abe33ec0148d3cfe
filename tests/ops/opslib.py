"""Helpers for the operations tests: unit-file and YAML readers, a notify socket, shells."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MOUNT_TIMEOUT, REPO, TOOLS, VENV_BIN, is_mounted, require_tool, run

SYSTEMD_DIR = REPO / "systemd"
EXAMPLES_DIR = REPO / "examples"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_installed(path: str) -> str:
    """An entry point scripts/setup.sh installs (as root) where units and mount(8) look."""
    if not (os.path.exists(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run `scripts/setup.sh` as root to install it", pytrace=False)
    return path


def tools_path() -> str:
    """PATH with the pinned tools and the venv first (what scripts/test.sh exports)."""
    return f"{TOOLS}:{VENV_BIN}:{SYSTEM_PATH}"


# --------------------------------------------------------------------------- unit files


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{path}: cannot read line {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict, section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert len(values) == 1, f"expected exactly one {key}= in [{section}], got {values}"
    return values[0]


def read_env_file(path: Path) -> dict[str, str]:
    """What systemd's EnvironmentFile= reads: KEY=VALUE lines, # comments, optional quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


# --------------------------------------------------------------------------- sd_notify


class NotifySocket:
    """The AF_UNIX datagram socket systemd gives a Type=notify service as $NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float, proc: subprocess.Popen | None = None) -> str:
        """Wait until a datagram containing the line ``field`` (e.g. READY=1) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            if any(field in m.splitlines() for m in self.messages):
                return field
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {field} on $NOTIFY_SOCKET after {timeout}s (got {self.messages})", pytrace=False)
            self.sock.settimeout(min(left, 0.2))
            try:
                self.messages.append(self.sock.recv(4096).decode(errors="replace"))
            except TimeoutError:
                if proc is not None and proc.poll() is not None and field == "READY=1":
                    pytest.fail(f"the service exited ({proc.returncode}) without sending {field}", pytrace=False)

    def drain(self) -> list[str]:
        self.sock.settimeout(0.05)
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode(errors="replace"))
            except (TimeoutError, BlockingIOError):
                return self.messages

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def wait_unmounted(path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while is_mounted(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- YAML subset


class YAMLSubsetError(ValueError):
    pass


_KEY = re.compile(r"^([A-Za-z0-9_.\-]+):(?:\s+(.*))?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _scalar(text: str):
    text = text.strip()
    if not text:
        return None
    if text[0] in "'\"":
        q = text[0]
        end = text.find(q, 1)
        while q == "'" and end != -1 and text[end + 1 : end + 2] == "'":
            end = text.find(q, end + 2)
        if end == -1:
            raise YAMLSubsetError(f"unterminated quoted scalar: {text!r}")
        rest = text[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise YAMLSubsetError(f"text after quoted scalar: {text!r}")
        body = text[1:end]
        return body.replace("''", "'") if q == "'" else body.replace('\\"', '"').replace("\\\\", "\\")
    m = re.search(r"\s#", text)
    if m:
        text = text[: m.start()].rstrip()
    if text.startswith("[") and text.endswith("]"):
        return [str(_scalar(x)) for x in text[1:-1].split(",") if x.strip()]
    if text.startswith(("{", "&", "*", "!", ">", "|")):
        raise YAMLSubsetError(f"unsupported YAML construct: {text!r}")
    return text


class MiniYAML:
    """Block mappings, block sequences, literal block scalars (|, |-), plain/quoted scalars and
    flow lists of scalars: enough for CI files, and it refuses what it does not understand."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.i = 0

    @classmethod
    def load(cls, text: str):
        p = cls(text)
        node = p._node()
        p._skip()
        if p.i < len(p.lines):
            raise YAMLSubsetError(f"line {p.i + 1}: unexpected {p.lines[p.i]!r}")
        return node

    def _skip(self) -> None:
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s and not s.startswith("#") and s != "---":
                if "\t" in self.lines[self.i][: _indent(self.lines[self.i]) + 1]:
                    raise YAMLSubsetError(f"line {self.i + 1}: tab in indentation")
                return
            self.i += 1

    def _node(self):
        self._skip()
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        s = line.strip()
        return self._seq(_indent(line)) if s == "-" or s.startswith("- ") else self._map(_indent(line))

    def _map(self, ind: int) -> dict:
        out: dict = {}
        while True:
            self._skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            cur = _indent(line)
            if cur < ind:
                return out
            if cur > ind:
                raise YAMLSubsetError(f"line {self.i + 1}: bad indentation: {line!r}")
            m = _KEY.match(line.strip())
            if not m:
                if line.strip().startswith("- "):
                    return out  # a sequence value at the key's own indentation ends here
                raise YAMLSubsetError(f"line {self.i + 1}: expected 'key: value': {line!r}")
            key, rest = m.group(1), (m.group(2) or "")
            if key in out:
                raise YAMLSubsetError(f"line {self.i + 1}: duplicate key {key!r}")
            self.i += 1
            out[key] = self._value(rest, ind)

    def _value(self, rest: str, ind: int):
        r = rest.strip()
        if r in ("|", "|-"):
            return self._block(ind, keep_newline=(r == "|"))
        if r == "" or r.startswith("#"):
            self._skip()
            if self.i >= len(self.lines):
                return None
            line = self.lines[self.i]
            nxt = _indent(line)
            if nxt > ind:
                return self._node()
            if nxt == ind and line.strip().startswith("- "):
                return self._seq(ind)
            return None
        return _scalar(r)

    def _seq(self, ind: int) -> list:
        out = []
        while True:
            self._skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            cur = _indent(line)
            s = line.strip()
            if cur < ind or not (s == "-" or s.startswith("- ")):
                if cur > ind:
                    raise YAMLSubsetError(f"line {self.i + 1}: bad indentation: {line!r}")
                return out
            if cur > ind:
                raise YAMLSubsetError(f"line {self.i + 1}: bad indentation: {line!r}")
            item = s[2:] if s != "-" else ""
            if _KEY.match(item.strip()):
                self.lines[self.i] = " " * (ind + 2) + item.strip()
                out.append(self._map(ind + 2))
            elif item.strip() in ("|", "|-", ""):
                raise YAMLSubsetError(f"line {self.i + 1}: unsupported sequence item {s!r}")
            else:
                self.i += 1
                out.append(_scalar(item))

    def _block(self, ind: int, keep_newline: bool) -> str:
        body: list[str] = []
        block_ind = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() == "":
                body.append("")
                self.i += 1
                continue
            cur = _indent(line)
            if cur <= ind:
                break
            if block_ind is None:
                block_ind = cur
            if cur < block_ind:
                raise YAMLSubsetError(f"line {self.i + 1}: bad block indentation")
            body.append(line[block_ind:])
            self.i += 1
        while body and body[-1] == "":
            body.pop()
        return "\n".join(body) + ("\n" if keep_newline and body else "")


def quote(s) -> str:
    return shlex.quote(str(s))


# --------------------------------------------------------------------------- mounts by hand


def unmounted(mount_factory, bucket, name: str):
    """A ``Mount`` whose mountpoint is ``<its workdir>/<name>``, not mounted yet: the fixture
    still tears it down (``ocifs umount``, lazy unmount as a last resort, workdir removed)."""
    m = mount_factory(bucket, mount=False)
    m.path = m.workdir / name
    m.path.mkdir(exist_ok=True)
    return m


def mount_in(m, cwd: Path, mountpoint_arg: str, helper: bool = False, ocifs: str | None = None, check: bool = True):
    """Mount ``m`` by running the real command in ``cwd``, the mountpoint spelled
    ``mountpoint_arg`` (e.g. relative): ``ocifs mount`` (``ocifs``: another installed copy),
    or with ``helper`` mount(8)'s helper ``mount.ocifs SOURCE DIR -o OPTIONS`` as mount(8)
    calls it."""
    m.generation += 1
    m.cache_dir.mkdir(parents=True)
    m.log_files.append(m.log_file)
    if helper:
        opts = f"endpoint_url={m.bucket.s3.endpoint},cache_dir={m.cache_dir},log_file={m.log_file}"
        args = [require_tool(VENV_BIN / "mount.ocifs"), m.bucket.url, mountpoint_arg, "-o", opts]
    else:
        args = m.mount_args()
        args[args.index(str(m.path))] = mountpoint_arg
        args[0] = ocifs or args[0]
    res = run(args, env=m.bucket.s3.env(), cwd=cwd, timeout=MOUNT_TIMEOUT, check=False)
    if check and (res.returncode != 0 or not is_mounted(m.path)):
        pytest.fail(f"mount in {cwd} failed\n{res.describe()}\n{m.log_tail()}", pytrace=False)
    return res
