import numpy as np
import pytest
import torch
from torch import nn

from common.explain import grad_cam


class SpotNet(nn.Module):
    """Conv net whose class-1 logit is the mean activation of a detector for bright pixels."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
        self.features = nn.Sequential(conv(1, 1, 1), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.fill_(1.0)
            self.features[0].bias.fill_(-0.5)
        self.pool = nn.Sequential(pool(1), nn.Flatten())
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)))


@pytest.mark.parametrize("shape,spot", [((16, 16), (4, 11)), ((8, 16, 16), (2, 12, 5))])
def test_grad_cam_peaks_on_the_evidence(shape, spot):
    model = SpotNet(len(shape))
    x = torch.zeros(1, 1, *shape)
    x[(0, 0, *spot)] = 1.0
    cam = grad_cam(model, x, "features", class_idx=1)
    assert cam.shape == shape
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert np.unravel_index(cam.argmax(), cam.shape) == spot


def test_grad_cam_rejects_unknown_layer():
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(SpotNet(2), torch.zeros(1, 1, 8, 8), "nope")
