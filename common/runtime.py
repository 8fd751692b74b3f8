"""Process-wide runtime settings: seeding, device choice, torch threads, offline Ultralytics.

Torch is imported inside the functions that need it, so importing this module stays cheap and torch-free
(the ONNX inference path imports it).
"""

from __future__ import annotations

import os
import random
import sys
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

DevicePreference = Literal["auto", "cpu", "cuda"]

# Ultralytics phones home (hub, GitHub assets for fonts and AMP-check weights) unless told not to.
_OFFLINE_ENV = {
    "YOLO_OFFLINE": "True",
    "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "False"),
    "HF_HUB_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "COMET_MODE": "disabled",
}
# Ultralytics unpickles .pt files with weights_only=False unless told otherwise: a crafted checkpoint would run
# code. Its safe mode loads tensors plus an allow-list of its own and torch's network classes (see common/__init__).
_SAFE_LOAD_ENV = {"ULTRALYTICS_SAFE_LOAD": "1"}


def configure_offline() -> None:
    """Set the environment that keeps Ultralytics (and friends) from reaching the network.

    Must run before ``import ultralytics``: it reads YOLO_OFFLINE (and ULTRALYTICS_SAFE_LOAD) at import time.
    """
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["YOLO_OFFLINE"] = "True"
    os.environ.update(_SAFE_LOAD_ENV)


def import_ultralytics():
    """Return the ``ultralytics`` module, configured offline, with its settings made network-free."""
    from common.distributed import hidden_launch_env

    if "ultralytics" not in sys.modules:
        configure_offline()
    # Under torchrun, Ultralytics would take our RANK/LOCAL_RANK (read once, at import) for its own DDP workers'.
    with hidden_launch_env():
        import ultralytics
        from ultralytics.utils import SETTINGS

    # sync=False stops anonymous analytics; hub/platform integrations off (raytune too: with Ray installed it would
    # import ray.tune into every detector training). Only the keys this release knows: an unknown one raises.
    off = {"sync", "hub", "wandb", "comet", "clearml", "dvc", "mlflow", "neptune", "raytune", "tensorboard"}
    SETTINGS.update({key: False for key in off if key in SETTINGS})
    return ultralytics


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices). ``deterministic`` also asks cuDNN for determinism."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def pick_device(preference: DevicePreference | str = "auto") -> torch.device:
    """CUDA when present (or asked for and present), else CPU. Asking for CUDA without one is an error.

    Under torchrun each process takes its own GPU, ``cuda:LOCAL_RANK`` (one process per GPU)."""
    import torch

    from common.distributed import launched, local_rank
    from common.errors import InputError

    if preference not in ("auto", "cpu", "cuda"):
        raise InputError(f"device {preference!r}: expected one of auto, cpu, cuda")
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if launched():
            if local_rank() >= torch.cuda.device_count():
                raise InputError(f"torchrun LOCAL_RANK {local_rank()} has no GPU: {torch.cuda.device_count()} visible; "
                                 "start at most one process per GPU (--nproc_per_node)")
            return torch.device("cuda", local_rank())
        return torch.device("cuda")
    if preference == "cuda":
        raise InputError("device 'cuda' requested but no CUDA device is available")
    return torch.device("cpu")


def set_torch_threads(n: int | None = None) -> int:
    """Set torch intra-op threads (default: all cores this process may use). Returns the count set."""
    import torch

    if n is None or n <= 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 natively (AMX or AVX512-BF16), so bf16 autocast speeds training up.

    Elsewhere PyTorch emulates bf16 and it is slower than fp32; callers then stay in fp32.
    """
    import torch

    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # pragma: no cover - older torch without the probes
        return False
