"""Random interleavings of file operations across processes, checked against the model.

A fixed seed in CI (derandomize); ``scripts/modelcheck.py --examples N`` runs many more and
prints what they covered. The model (tests/model.py) is the written promise; the driver
(tests/modelrun.py) runs ocifs's FUSE operations on the fake S3.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from model import sequences
from modelrun import check_sequence


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sequences())
def test_random_operation_sequences_keep_every_promise(ops):
    with tempfile.TemporaryDirectory(prefix="ocifs-model-") as tmp:
        check_sequence(ops, Path(tmp))
