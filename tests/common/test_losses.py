import pytest
import torch

from common.losses import FocalLoss, balanced_class_weights


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(16, 3)
    y = torch.randint(0, 3, (16,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert FocalLoss(gamma=0.0)(logits, y).item() == pytest.approx(ce.item(), rel=1e-5)
    # focusing down-weights easy examples: focal loss is never above CE
    assert FocalLoss(gamma=2.0)(logits, y).item() <= ce.item()


def test_class_weights_balanced():
    w = balanced_class_weights([90, 10])
    assert w.tolist() == pytest.approx([100 / 180, 100 / 20])
