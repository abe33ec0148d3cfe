"""scripts/setup.sh: the source-built tools (zot, goofys, geesefs) are installed at their pins,
a second run does nothing, and a tool that can be neither go-installed nor built from an archive
stops setup with one line that says what to do.

Everything runs the real script: sourcing it defines the pins and the install functions and
installs nothing, so the failure and fresh-install cases run against a temporary TOOLS dir and
never touch the real .tools/bin.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, TOOLS, require_tool

pytestmark = pytest.mark.timeout(300)

SETUP = REPO / "scripts" / "setup.sh"
SRC_TOOLS = ("zot", "goofys", "geesefs")


def setup_env(**extra: str) -> dict[str, str]:
    """The caller's environment; setup never re-points /usr/local/bin/ocifs & co. from a test."""
    return {**os.environ, "OCIFS_NO_SYSTEM_LINKS": "1", **extra}


def pins() -> dict[str, tuple[str, str]]:
    """{tool: (ref, commit)} as scripts/setup.sh pins them."""
    names = " ".join(f'"${n.upper()}_REF ${n.upper()}_COMMIT"' for n in SRC_TOOLS)
    out = subprocess.run(["bash", "-c", f'source "$0" && printf "%s\\n" {names}', str(SETUP)],
                         env=setup_env(), capture_output=True, text=True, check=True, timeout=30).stdout.split("\n")
    return {n: tuple(line.split()) for n, line in zip(SRC_TOOLS, out)}


def install(tool: str, tools_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run setup.sh's `<tool>_tool` function with TOOLS pointed at tools_dir."""
    return subprocess.run(["bash", "-c", f'source "$0" && TOOLS=$1 && {tool}_tool', str(SETUP), str(tools_dir)],
                          env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("tool", SRC_TOOLS)
def test_installed_tool_reports_pinned_version(tool):
    exe = require_tool(TOOLS / tool)
    ref, commit = pins()[tool]
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # zot: "commit":"v2.1.9-0-g73eef25"; goofys: "0.24.0-<commit>"; geesefs: "geesefs version 0.43.8"
    expected = {"zot": f'"{ref}-0-g{commit[:7]}"', "goofys": commit, "geesefs": f"version {ref.lstrip('v')}"}[tool]
    assert expected in out, f"{tool} --version does not report {expected!r}: {out.strip()}"


def test_second_setup_run_does_nothing():
    for tool in SRC_TOOLS:
        require_tool(TOOLS / tool)
    before = {p.name: p.stat().st_mtime_ns for p in TOOLS.iterdir()}
    r = subprocess.run(["bash", str(SETUP)], env=setup_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("[setup] ready:"), \
        "a second scripts/setup.sh run did more than report ready:\n" + "\n".join(lines)
    assert {p.name: p.stat().st_mtime_ns for p in TOOLS.iterdir()} == before, "setup rewrote .tools/bin"


@pytest.mark.parametrize("tool", SRC_TOOLS)
def test_no_module_and_no_archive_fails_with_one_line(tool, tmp_path):
    ref, commit = pins()[tool]
    tools_dir = tmp_path / "bin"
    tools_dir.mkdir()
    env = setup_env(GOPROXY="off", GOMODCACHE=str(tmp_path / "modcache"),
                    OCIFS_VENDOR_DIR=str(tmp_path / "no-such-vendor-dir"))
    r = install(tool, tools_dir, env)
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{r.stderr}"
    line = lines[0]
    archive = f"{tool}-{ref}.tar.gz"
    for s in (f"no {archive} in OCIFS_VENDOR_DIR={tmp_path / 'no-such-vendor-dir'}",
              "set OCIFS_VENDOR_DIR to a directory holding one",
              f"archive --prefix={tool}-{ref}/ -o \"$PWD/{archive}\" {commit}"):
        assert s in line, f"{s!r} not in: {line}"
    if tool == "goofys":  # the one with a module to try: the refusal is named
        assert f"refused github.com/kahing/goofys@{commit} (module lookup disabled by GOPROXY=off)" in line, line
    assert list(tools_dir.iterdir()) == []


def test_install_into_empty_tools_dir(tmp_path):
    """goofys from scratch, as on a fresh machine: go install where a proxy serves it, else the archive."""
    commit = pins()["goofys"][1]
    tools_dir = tmp_path / "bin"
    tools_dir.mkdir()
    r = install("goofys", tools_dir, setup_env())
    assert r.returncode == 0, f"{r.stderr[-2000:]}\n(the README's commands set OCIFS_VENDOR_DIR)"
    v = subprocess.run([tools_dir / "goofys", "--version"], capture_output=True, text=True, timeout=30)
    assert commit in v.stdout + v.stderr
    again = install("goofys", tools_dir, setup_env())
    assert (again.returncode, again.stderr) == (0, ""), again.stderr
