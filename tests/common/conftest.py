import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.common.toys import blobs


@pytest.fixture
def toy_loaders():
    torch.manual_seed(0)
    xt, yt = blobs(512, 0)
    xv, yv = blobs(256, 1)
    train = DataLoader(TensorDataset(xt, yt), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    return train, val
