"""Weights files the tests write themselves (no download anywhere): an "ImageNet" ResNet state_dict in a temporary
torch cache, an Ultralytics checkpoint saved from a YOLO built from yaml, and a local HTTP server to pull from."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import torchvision


def resnet_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random 1000-class ``arch`` state_dict: the shape torchvision's ImageNet file has."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def write_imagenet_cache(torch_home: Path, arch: str, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write ``arch``'s state_dict where ``weights: imagenet`` looks for it under ``torch_home`` (TORCH_HOME)."""
    from common.weights import torchvision_url

    path = torch_home / "hub" / "checkpoints" / torchvision_url(arch).rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    state = resnet_state(arch, seed)
    torch.save(state, path)
    return path, state


def write_yolo_checkpoint(path: Path, yaml: str = "yolov5nu.yaml") -> Path:
    """An Ultralytics checkpoint of a YOLO built from yaml, saved as its trainer saves the model."""
    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": YOLO(yaml).model}, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def medicalnet_state(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random MedicalNet-shaped resnet``depth`` backbone (MONAI's net built the way MedicalNet trained)."""
    from monai.networks import nets
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    torch.manual_seed(seed)
    bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
    return getattr(nets, f"resnet{depth}")(spatial_dims=3, n_input_channels=1, feed_forward=False,
                                           shortcut_type=shortcut, bias_downsample=bias_downsample).state_dict()


def write_medicalnet_file(path: Path, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a backbone as MedicalNet's files hold it: ``{"state_dict": {"module.<name>": tensor}}``."""
    state = medicalnet_state(depth, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state
