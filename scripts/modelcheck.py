#!/usr/bin/env python3
"""Check ocifs against its reference model with many random operation sequences.

    .venv/bin/python scripts/modelcheck.py --examples 2000 [--seed N] [--steps 40]

Runs hypothesis-generated sequences of open / write / ftruncate / truncate / read / stat /
flush / fsync / close / rename / unlink (and injected publish failures) across three
processes on a kernel-free mount of the fake S3 (tests/modelrun.py), checking every answer and
the bucket after every step; then prints how many sequences and steps ran and what they
covered. A failure prints the shortest sequence hypothesis found.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from hypothesis import HealthCheck, given, settings  # noqa: E402

from model import Model, sequences  # noqa: E402
from modelrun import check_sequence  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=40, help="longest sequence")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # injected failures log one line each: not news here
    covered: collections.Counter[str] = collections.Counter()
    stats = {"sequences": 0, "steps": 0}

    @settings(max_examples=a.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(sequences(max_size=a.steps))
    def check(ops):
        with tempfile.TemporaryDirectory(prefix="ocifs-model-") as tmp:
            m = check_sequence(ops, Path(tmp), Model())
        stats["sequences"] += 1
        stats["steps"] += len(ops)
        covered.update(m.covered)

    if a.seed is not None:
        from hypothesis import seed
        check = seed(a.seed)(check)
    start = time.monotonic()
    try:
        check()
        result = "PASS"
    except (AssertionError, BaseExceptionGroup) as exc:
        for leaf, notes in _leaves(exc):
            print(f"{type(leaf).__name__}: {leaf}")
            for note in notes:
                print("   ", note)
        result = "FAIL"
    print(f"sequences {stats['sequences']}  steps {stats['steps']}  in {time.monotonic() - start:.0f} s")
    for name, n in sorted(covered.items(), key=lambda kv: -kv[1]):
        print(f"  {n:7d}  {name}")
    print(f"RESULT: {result}")
    return 0 if result == "PASS" else 1


def _leaves(exc: BaseException, notes: tuple[str, ...] = ()) -> list[tuple[BaseException, list[str]]]:
    """The failures in ``exc`` with the notes hypothesis attached (the failing sequence)."""
    notes = notes + tuple(getattr(exc, "__notes__", ()))
    if isinstance(exc, BaseExceptionGroup):
        return [x for e in exc.exceptions for x in _leaves(e, notes)]
    return [(exc, [n for n in notes if "ops=" in n or "Falsifying" in n or "Failing" in n])]


if __name__ == "__main__":
    raise SystemExit(main())
