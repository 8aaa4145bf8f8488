"""`fit --train` against the memory a real training step measures (tests/oracle_memory.py, real CPU tensors).

The answer must be neither loose nor tight by more than 20%: the measured peak at the returned batch is within the
budget, and at 1.2 times that batch it is over. resnet18 at 160 px with a 512 MiB budget and the default reserve;
each measurement allocates up to about 0.7 GiB and runs two training steps, hence slow.
"""

from __future__ import annotations

import math

import pytest
from oracle_memory import measure_step

from resnet_inspect.pipeline.fit import fit_report

BUDGET = 512 << 20
SIZE = 160


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw"])  # SGD with momentum: measured in tests/test_training.py
def test_the_measured_peak_fits_at_the_answer_and_not_at_six_fifths_of_it(optimizer: str):
    report = fit_report("resnet18", BUDGET, SIZE, train=True, optimizer=optimizer)
    batch = report.batch_size
    assert report.search.passes == 3
    at_answer = measure_step("resnet18", (batch, 3, SIZE, SIZE), optimizer)
    assert at_answer.peak_bytes <= BUDGET
    beyond = math.floor(1.2 * batch)
    assert measure_step("resnet18", (beyond, 3, SIZE, SIZE), optimizer).peak_bytes > BUDGET
