import numpy as np
import pytest
import torch

from common.checkpoints import load_checkpoint, save_checkpoint
from common.errors import InputError


def test_numpy_values_come_back_as_plain_values_under_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"w": torch.ones(2), "score": np.float64(0.5), "counts": np.array([3, 4]),
                           "history": [{"lr": np.float32(0.25)}], "pair": (1, "a")})
    back = load_checkpoint(path)
    assert torch.equal(back["w"], torch.ones(2))
    assert back["score"] == 0.5 and back["counts"] == [3, 4] and back["history"] == [{"lr": 0.25}]
    assert back["pair"] == (1, "a")
    assert not path.with_suffix(".pt.tmp").exists()


def test_missing_or_unreadable_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)
