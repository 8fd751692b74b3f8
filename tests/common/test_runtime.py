import os

import pytest
import torch

from common.errors import InputError
from common.runtime import configure_offline, pick_device, seed_everything, set_torch_threads


def test_runtime_helpers():
    configure_offline()
    assert os.environ["YOLO_OFFLINE"] == "True"
    seed_everything(7)
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(a, torch.rand(3))
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            pick_device("cuda")
    with pytest.raises(InputError):
        pick_device("tpu")
    n = torch.get_num_threads()
    assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(n)


def test_ultralytics_integrations_are_switched_off():
    # Every integration key this Ultralytics release knows is off (an unknown key must not undo the others): with
    # Ray installed, raytune left on would import ray.tune into every detector training.
    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics.utils import SETTINGS

    for key in ("sync", "raytune", "tensorboard", "mlflow", "wandb"):
        if key in SETTINGS:
            assert SETTINGS[key] is False, key
    assert "sync" in SETTINGS and "raytune" in SETTINGS
