"""The bench's push floor: what no filesystem under `oras push` can beat (bench/perfreport.py),
and the poll that times oras's pass over its files before the first write (bench/workloads.py)."""

from __future__ import annotations

import sys

import pytest

from bench import perfreport, workloads
from bench.common import MiB


def _s(target: str, mibps: float, seconds: float, **extra) -> dict:
    return {"workload": "push", "case": "1GiB", "size_bytes": 1024 * MiB, "target": target,
            "median_mibps": mibps, "median_seconds": seconds, **extra}


def test_the_push_floor_is_the_prepass_then_the_faster_raw_upload() -> None:
    by = {("push", "1GiB", s["target"]): s for s in (
        _s("raw", 1024 / 5.0, 5.0), _s("s5cmd", 1024 / 4.0, 4.0),
        _s("oras-local", 1024 / 2.5, 2.5, median_prepass_seconds=1.0),
    )}
    assert perfreport.push_floor(by, "1GiB") == pytest.approx(1024 / (1.0 + 4.0))


def test_without_a_prepass_or_a_raw_run_there_is_no_floor() -> None:
    raw = _s("raw", 200.0, 5.12)
    assert perfreport.push_floor({("push", "1GiB", "raw"): raw}, "1GiB") is None
    local = _s("oras-local", 400.0, 2.56, median_prepass_seconds=1.0)
    assert perfreport.push_floor({("push", "1GiB", "oras-local"): local}, "1GiB") is None


def test_each_serial_close_adds_one_response_latency_to_the_floor() -> None:
    by = {("push", "1GiB", s["target"]): s for s in (
        _s("s5cmd", 1024 / 4.0, 4.0), _s("oras-local", 1024 / 2.5, 2.5, median_prepass_seconds=1.0),
    )}
    expect = 1024 / (1.0 + 4.0 + perfreport.SERIAL_CLOSES * 0.025)
    assert perfreport.push_floor(by, "1GiB", latency=0.025) == pytest.approx(expect)


def test_the_profile_latency_is_the_sum_of_its_latency_toxics() -> None:
    mach = {"toxics": [{"type": "bandwidth", "attributes": {"rate": 90000}},
                       {"type": "latency", "attributes": {"latency": 25, "jitter": 0}}]}
    assert perfreport.first_byte_latency(mach) == pytest.approx(0.025)
    assert perfreport.first_byte_latency({}) == 0


def test_the_floor_rows_give_ocifs_its_ratio_to_the_floor() -> None:
    by = {("push", "1GiB", s["target"]): s for s in (
        _s("ocifs", 1024 / 8.0, 8.0), _s("s5cmd", 1024 / 4.0, 4.0),
        _s("oras-local", 1024 / 2.0, 2.0, median_prepass_seconds=1.0),
    )}
    floor_row, ratio_row = perfreport._floor_rows(by, ["1GiB"], latency=0.0)
    assert floor_row == f"| oras floor: prepass + best raw + closes | {1024 / 5.0:.1f} |"
    assert ratio_row == f"| ocifs / oras floor | {5.0 / 8.0:.2f} |"


def test_run_cmd_times_the_first_entry_in_the_watched_directory(tmp_path) -> None:
    watched = tmp_path / "ingest"
    script = ("import os, time; time.sleep(0.3); os.mkdir(%r); open(os.path.join(%r, 'a'), 'w').close(); "
              "time.sleep(0.3)") % (str(watched), str(watched))
    c = workloads.run_cmd([sys.executable, "-c", script], watch=watched, timeout=30)
    assert c.returncode == 0
    assert c.first_entry_seconds is not None
    assert 0.3 <= c.first_entry_seconds < c.seconds - 0.2


def test_run_cmd_without_an_entry_reports_none(tmp_path) -> None:
    c = workloads.run_cmd([sys.executable, "-c", "pass"], watch=tmp_path / "never", timeout=30)
    assert c.returncode == 0 and c.first_entry_seconds is None


def test_the_floor_moves_the_bytes_of_the_case() -> None:
    # the case's bytes (blob size x count) over prepass + raw seconds
    by = {("push", "64MiB", "oras-local"): {"case": "64MiB", "size_bytes": 64 * MiB, "median_mibps": 64.0,
                                            "median_seconds": 1.0, "median_prepass_seconds": 0.5},
          ("push", "64MiB", "raw"): {"median_mibps": 128.0, "median_seconds": 0.5}}
    assert perfreport.push_floor(by, "64MiB") == pytest.approx(64.0)
    by = {("push", "16MiBx8", "oras-local"): {"case": "16MiBx8", "size_bytes": 16 * MiB, "median_mibps": 64.0,
                                              "median_seconds": 2.0, "median_prepass_seconds": 0.5},
          ("push", "16MiBx8", "raw"): {"median_mibps": 128.0, "median_seconds": 1.5}}
    assert perfreport.push_floor(by, "16MiBx8") == pytest.approx(128 / 2.0)
