"""Stage 2's class-conditional polarity flip: the polarity of a defect mark, which classes get flipped, and the
flipped training crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.config import config_section
from common.errors import InputError
from industrial_qc.classifier import CropDataset, invert_polarity, polarity_flip_classes
from industrial_qc.config import DEFAULT_CONFIG, AugmentConfig
from industrial_qc.crops import box_polarity, to_tensor_batch
from industrial_qc.cropset import CropSet

LABELS = ["background", "scratch", "pit", "crack"]


def _augment(**changes) -> AugmentConfig:
    return config_section(AugmentConfig, DEFAULT_CONFIG, "classifier.augment", **changes)


def _surface(seed: int = 0, size: int = 160) -> np.ndarray:
    """Brushed-metal-like grey texture: streaks along x plus sensor noise."""
    rng = np.random.default_rng(seed)
    streaks = cv2.GaussianBlur(rng.normal(0, 12, (size, size)).astype(np.float32), (0, 0), sigmaX=15, sigmaY=0.7)
    return np.clip(128 + streaks + rng.normal(0, 3, (size, size)), 0, 255).astype(np.float32)


def test_box_polarity_tells_bright_from_dark_marks_on_texture():
    boxes, expected = [], []
    g = _surface()
    cv2.line(g, (20, 30), (70, 60), 160, 1)  # bright hairline
    boxes.append([18, 28, 72, 62])
    expected.append(1)
    cv2.line(g, (90, 20), (140, 70), 95, 1)  # dark hairline
    boxes.append([88, 18, 142, 72])
    expected.append(-1)
    cv2.circle(g, (40, 120), 7, 150, 2)  # a pit: dark dent with a lit rim
    cv2.circle(g, (40, 120), 5, 70, -1)
    boxes.append([31, 111, 49, 129])
    expected.append(-1)
    gray = g.astype(np.uint8)
    np.testing.assert_array_equal(box_polarity(gray, np.array(boxes, np.float32)), expected)
    assert box_polarity(gray, np.zeros((0, 4), np.float32)).shape == (0,)
    assert box_polarity(gray, np.array([[150, 150, 160, 160]], np.float32)).shape == (1,)  # at the border


def test_invert_polarity_turns_a_dark_line_bright_and_keeps_the_mean():
    crop = np.full((32, 32, 3), 120, np.uint8)
    crop[16, :] = (60, 70, 80)
    out = invert_polarity(crop)
    assert out.dtype == np.uint8
    assert (out[16].astype(int) > out[0].astype(int)).all()  # the line is now brighter than the surface
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), crop.reshape(-1, 3).mean(0), atol=0.6)


def _crop_set(polarity_by_class: dict[int, list[int]]) -> CropSet:
    targets = [0, 0] + [c for c, pol in polarity_by_class.items() for _ in pol]
    polarity = [0, 0] + [p for pol in polarity_by_class.values() for p in pol]
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (len(targets), 48, 48, 3), dtype=np.uint8)
    return CropSet(crops=crops, targets=np.array(targets, np.int64), kinds=np.array(["random"] * 2 + ["defect"] * (
        len(targets) - 2), dtype=object), polarity=np.array(polarity, np.int8))


def test_auto_polarity_flips_only_classes_that_go_both_ways():
    cs = _crop_set({1: [1, 1, -1, -1, 1], 2: [-1, -1, -1, -1, 1], 3: [-1] * 6})  # 60 %, 20 %, 0 % bright
    cfg = _augment(invert=0.5)
    assert polarity_flip_classes(cfg, LABELS, cs) == ["scratch"]
    assert polarity_flip_classes(_augment(invert=0.5, invert_min_share=0.2), LABELS, cs) == ["scratch", "pit"]
    assert polarity_flip_classes(_augment(invert=0.5, invert_classes=["crack"]), LABELS, cs) == ["crack"]
    with pytest.raises(InputError, match="rust"):
        polarity_flip_classes(_augment(invert=0.5, invert_classes=["rust"]), LABELS, cs)


def test_crop_dataset_flips_the_chosen_classes_only():
    cs = _crop_set({1: [1, -1], 3: [-1, -1]})
    flipping = CropDataset(cs, 32, None, normalize="imagenet", invert=1.0, invert_targets=(1,))
    for i, t in enumerate(cs.targets):
        x, y = flipping[i]
        assert y == t
        crop = invert_polarity(cs.crops[i]) if t == 1 else cs.crops[i]
        expected = to_tensor_batch(crop[None, 8:40, 8:40], normalize="imagenet")[0]  # the centre 32 of 48
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)


def test_crop_sets_measure_polarity_only_when_asked(tiny_data):
    from industrial_qc.cropset import build_crop_set
    from industrial_qc.data import load_dataset

    train = load_dataset(tiny_data, ("train",)).split("train")
    kw = dict(crop_size=32, context=0.15, min_crop=0.06)
    plain = build_crop_set(train, **kw)
    assert plain.polarity is None
    with pytest.raises(ValueError, match="measure_polarity"):
        plain.bright_share(len(LABELS) + 1)
    measured = build_crop_set(train, measure_polarity=True, **kw)
    gt = measured.kinds == "defect"
    assert gt.any() and set(measured.polarity[gt].tolist()) <= {-1, 1}
    assert (measured.polarity[~gt] == 0).all()
    np.testing.assert_array_equal(measured.targets, plain.targets)  # same crops, one more field
    shares = measured.bright_share(5)
    assert shares and all(0 <= v <= 1 for v in shares.values())


def test_imagenet_weights_load_from_the_local_torch_cache(tmp_path, monkeypatch):
    """``weights: imagenet`` = torchvision's file name under TORCH_HOME, loaded like a local state_dict: every
    backbone tensor is the file's, the head (a different class count) keeps its fresh init."""
    import torch

    from industrial_qc.classifier import build_classifier
    from tests.common.weights_files import write_imagenet_cache

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError, match=r"resnet34-b627a593\.pth .*vsuite weights pull resnet34"):
        build_classifier("resnet34", 3, weights="imagenet")
    path, state = write_imagenet_cache(tmp_path, "resnet34", seed=1)
    torch.manual_seed(0)
    scratch = build_classifier("resnet34", 3).state_dict()
    torch.manual_seed(0)
    net = build_classifier("resnet34", 3, weights="imagenet")
    by_path = build_classifier("resnet34", 3, weights=path).state_dict()  # a local path: the same loader
    got = net.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(got[k], state[k]) and torch.equal(by_path[k], state[k]) for k in backbone)
    assert not torch.equal(scratch["conv1.weight"], got["conv1.weight"])  # the file changed the parameters
    assert got["fc.weight"].shape == (3, 512) and torch.equal(got["fc.weight"], scratch["fc.weight"])


def test_stage_one_of_staged_unfreezing_leaves_the_frozen_weights_bit_identical(tmp_path, monkeypatch):
    """Stages [fc only, then all] from cached ImageNet weights: after stage 1 every parameter outside ``fc`` is
    still the file's, bit for bit; fc has moved; stage 2 then trains the backbone too."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from common.checkpoints import load_checkpoint
    from common.config import TrainConfig
    from common.engine import fit
    from industrial_qc.classifier import build_classifier
    from tests.common.weights_files import write_imagenet_cache

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, state = write_imagenet_cache(tmp_path, "resnet18")
    model = build_classifier("resnet18", 2, weights="imagenet")
    cfg = config_section(TrainConfig, DEFAULT_CONFIG, "classifier.train", batch_size=4, amp=False, cpu_bf16=False,
                         stages=[{"epochs": 1, "lr": 1e-2, "trainable": ["fc"]},
                                 {"epochs": 1, "lr": 1e-2, "trainable": ["*"]}])
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.tensor([0, 1] * 4)
    snapshots = []  # the parameters as each epoch starts training

    class Recording:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            snapshots.append({k: p.detach().clone() for k, p in model.named_parameters()})
            return iter(self.loader)

    train = Recording(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=gen))
    fit(model, train, DataLoader(TensorDataset(x, y), batch_size=8), cfg, tmp_path / "fit", ["a", "b"],
        class_counts=[4, 4], device=torch.device("cpu"))
    assert len(snapshots) == 2
    after_stage1 = snapshots[1]
    frozen = [k for k in after_stage1 if not k.startswith("fc.")]
    assert frozen and all(torch.equal(after_stage1[k], state[k]) for k in frozen)
    assert not torch.equal(after_stage1["fc.weight"], snapshots[0]["fc.weight"])
    last = load_checkpoint(tmp_path / "fit" / "last.pt")["model"]  # after stage 2 (fit returns the best epoch)
    assert any(not torch.equal(last[k], state[k]) for k in frozen)
