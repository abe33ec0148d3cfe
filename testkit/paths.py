"""Where the rig's programs are, and the one error the rig raises.

The pinned servers and clients live in ``.tools/bin`` and the ocifs console scripts in
``.venv/bin``; both are made by ``scripts/setup.sh``, so every "missing" message names it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"
SETUP_HINT = "run `scripts/setup.sh` to install it"


class RigError(Exception):
    """Something in the rig (a tool, a server, a command), not necessarily in ocifs, did not work.

    The rig is shared by pytest, the benchmark and scripts, and each reports failures its own
    way (``pytest.fail``, a failed benchmark step, an exit status), so the rig only raises this.
    """


def find_tool(name: str) -> str | None:
    """An executable by name: ``.tools/bin``, then the venv, then PATH; None if absent."""
    for d in (TOOLS, VENV_BIN):
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which(name)


def require_tool(path_or_name: str | os.PathLike[str]) -> str:
    """The path of a required executable: a path must be exactly there (a pinned tool is not
    replaced by another version on PATH); a bare name is looked up with :func:`find_tool`."""
    p = Path(path_or_name)
    if p.is_absolute() or os.sep in str(path_or_name):
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
        raise RigError(f"required tool {p} is missing: {SETUP_HINT}")
    found = find_tool(str(path_or_name))
    if not found:
        raise RigError(f"required tool {str(path_or_name)!r} is not on PATH: {SETUP_HINT}")
    return found


def ocifs_cmd() -> list[str]:
    """The installed ``ocifs`` console script: what users run, so what the rig runs."""
    exe = VENV_BIN / "ocifs"
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise RigError(f"the ocifs console script {exe} is missing: {SETUP_HINT}")
    return [str(exe)]
