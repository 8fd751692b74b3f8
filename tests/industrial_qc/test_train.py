"""Training glue: the shared time budget and the warning when stage 2 sees little clean surface."""

from __future__ import annotations

import time

import pytest

from industrial_qc.train import MIN_RESERVE_S, Budget, background_warning


def test_training_warns_when_background_crops_are_few():
    assert background_warning([900, 300, 300, 300]) is None
    assert background_warning([200, 300, 300, 200]) is None  # a quarter of the defect crops
    said = background_warning([0, 9, 6, 7, 11])
    assert said.startswith("0 background crops for 33 defect crops") and "good parts" in said


def test_the_budget_splits_the_wall_time_between_the_stages_and_keeps_a_reserve():
    budget = Budget(start=100.0, seconds=600.0)
    assert budget.deadline == 700.0
    assert budget.detector_minutes(0.5) == pytest.approx((600 - 48) * 0.5 / 60)  # reserve: 8 % of the budget
    assert budget.reference_deadline() == 700.0 - MIN_RESERVE_S / 2
    assert Budget(start=0.0, seconds=60.0).detector_minutes(0.5) == pytest.approx((60 - MIN_RESERVE_S) * 0.5 / 60)
    assert Budget(start=0.0, seconds=1.0).detector_minutes(0.5) == 0.05  # never less than 3 s
    late = Budget(start=0.0, seconds=60.0)  # its deadline long gone on time.monotonic's clock
    assert late.classifier_deadline() >= time.monotonic() + 4.9  # stage 2 still gets a few seconds
    unlimited = Budget.begin(None)
    assert unlimited.deadline is None and unlimited.detector_minutes(0.5) is None
    assert unlimited.classifier_deadline() is None and unlimited.reference_deadline() is None
