import math

import pytest
import torch

from common.optim import fit_cycle_to_deadline
from tests.common.toys import TinyNet


def test_fit_cycle_to_deadline_rules():
    opt = torch.optim.AdamW(TinyNet().parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60, eta_min=0.0)
    assert fit_cycle_to_deadline(sched, 1, epoch_seconds=10, seconds_left=95, epochs_planned=60) == 11
    assert fit_cycle_to_deadline(sched, 5, epoch_seconds=10, seconds_left=300, epochs_planned=60) == 35  # regrows
    assert fit_cycle_to_deadline(sched, 5, epoch_seconds=10, seconds_left=9999, epochs_planned=60) == 60  # capped
    assert fit_cycle_to_deadline(sched, 5, epoch_seconds=10, seconds_left=9999, epochs_planned=20) == 20
    assert fit_cycle_to_deadline(sched, 9, epoch_seconds=10, seconds_left=0, epochs_planned=60) == 10  # >= next
    sched.step(9.5)
    assert opt.param_groups[0]["lr"] < 0.01  # the cut-short last epoch runs near the minimum
    sched.step(10.0)  # an epoch that ended the cycle exactly leaves the restart rate behind ...
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    assert fit_cycle_to_deadline(sched, 10, epoch_seconds=10, seconds_left=25, epochs_planned=60) == 13
    # ... and the re-fit puts it back on the new cycle, 10 epochs into 13
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 13)))
    assert fit_cycle_to_deadline(sched, 60, epoch_seconds=10, seconds_left=500, epochs_planned=120) is None
