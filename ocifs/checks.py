"""One result of ``ocifs doctor``: shared by the machine checks and the bucket checks."""

from __future__ import annotations

import dataclasses

OK, WARN, FAIL, SKIP, INFO = "ok", "warn", "FAIL", "skip", "info"


@dataclasses.dataclass
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""  # what to do about a WARN or FAIL
