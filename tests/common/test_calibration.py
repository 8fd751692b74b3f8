import numpy as np
import pytest
import torch

from common.calibration import fit_temperature, fit_temperature_bias, nll
from common.inference import softmax
from common.metrics import expected_calibration_error
from tests.common.toys import TinyNet, blobs


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    probs = softmax(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])
    t = fit_temperature(true_logits * 3.0, y)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(true_logits * 3.0, y, t) < nll(true_logits * 3.0, y, 1.0)


def test_temperature_on_a_perfectly_separated_split_stays_finite():
    """18 validation cases the model separates: hard-target NLL would push T to its bound and p to 0/1."""
    rng = np.random.default_rng(1)
    y = np.array([0] * 9 + [1] * 9)
    margin = np.where(y == 1, 1.0, -1.0) * rng.uniform(8, 30, size=18)  # confident and right
    logits = np.stack([-margin / 2, margin / 2], axis=1)
    t = fit_temperature(logits, y)
    p = softmax(logits, t)[np.arange(18), y]
    assert t > 1.0  # softened, not sharpened
    assert 0.8 < p.mean() < 0.999  # about (9 + 1) / (9 + 2) = 0.91, the confidence 9 cases per class support


def test_temperature_and_bias_calibrate_lopsided_logits():
    """Normals all at a small constant logit, positives far out (a CNN over a blob filter): T alone cannot put
    both classes near the confidence 9 cases support; T with a class offset can, and keeps the ranking."""
    rng = np.random.default_rng(2)
    y = np.array([0] * 9 + [1] * 9)
    d = np.where(y == 1, rng.uniform(60, 150, size=18), -10.0 + rng.normal(0, 0.1, size=18))
    logits = np.stack([np.zeros(18), d], axis=1)
    t_only = fit_temperature(logits, y)
    t, b = fit_temperature_bias(logits, y)
    assert b[0] == 0.0 and len(b) == 2
    p_t = softmax(logits, t_only)[np.arange(18), y]
    p_tb = softmax(logits / t + np.array(b))[np.arange(18), y]
    target = 10 / 11
    assert abs(p_tb[y == 0].mean() - target) < 0.05  # normals near 0.91 sure of being normal
    assert abs(p_tb[y == 0].mean() - target) < abs(p_t[y == 0].mean() - target)
    assert p_tb.min() > 0.5  # every case still on its own side
    # balanced, symmetric logits need no offset: the joint fit reduces to temperature scaling
    m = np.where(y == 1, 1.0, -1.0) * rng.uniform(8, 30, size=18)
    t2, b2 = fit_temperature_bias(np.stack([-m / 2, m / 2], axis=1), y)
    assert abs(b2[1]) < 0.5
    assert t2 > 1.0


def test_temperature_scaling_lowers_ece_of_overconfident_model(tmp_path):
    """Train far past the point of overfitting on noisy labels: confident and often wrong; T fixes that."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny full-batch steps: extra threads only add sync overhead on a busy machine
    xt, yt = blobs(128, 5, noise=1.4, flip=0.2)
    xv, yv = blobs(1000, 6, noise=1.4, flip=0.2)
    model = TinyNet(hidden=128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(600):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    torch.set_num_threads(threads)
    with torch.no_grad():
        logits = model(xv).numpy()
    y = yv.numpy()
    ece_before = expected_calibration_error(y, softmax(logits))
    t = fit_temperature(logits, y)
    ece_after = expected_calibration_error(y, softmax(logits, t))
    assert t > 1.5, "an overfit model should need a temperature well above 1"
    assert ece_before > 0.1
    assert ece_after < ece_before / 2
