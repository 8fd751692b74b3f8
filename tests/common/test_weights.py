"""Pretrained weights come from the local caches only: the lookup (TORCH_HOME, Ultralytics' weights dir), the one
offline error, and ``vsuite weights pull`` against a server on 127.0.0.1 (hash checked, bad files refused)."""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from common import weights
from common.errors import InputError
from tests.common.weights_files import (
    resnet_state,
    serve,
    sha256,
    write_imagenet_cache,
    write_medicalnet_file,
    write_yolo_checkpoint,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def yolo_dir(tmp_path, monkeypatch):
    """Ultralytics' weights dir moved to a temporary folder (a copy of its settings: the real file is untouched)."""
    from common.runtime import import_ultralytics

    import_ultralytics()
    import ultralytics.utils

    wdir = tmp_path / "yolo_weights"
    monkeypatch.setattr(ultralytics.utils, "SETTINGS", {**ultralytics.utils.SETTINGS, "weights_dir": str(wdir)})
    return wdir


def test_imagenet_lookup_is_torchvisions_file_name_under_torch_home(torch_home):
    url = weights.torchvision_url("resnet18")
    assert url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"  # torchvision's weights API
    entry = weights.weights_entry("resnet18")
    assert entry.path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and entry.url == url
    path, _ = write_imagenet_cache(torch_home, "resnet18")
    assert weights.imagenet_weights("resnet18") == path


def test_not_cached_is_one_error_naming_the_path_and_the_pull_command(torch_home, yolo_dir):
    expected = weights.weights_entry("resnet50").path
    with pytest.raises(InputError) as err:
        weights.imagenet_weights("resnet50")
    msg = str(err.value)
    assert str(expected) in msg and "vsuite weights pull resnet50" in msg and "never downloaded" in msg
    with pytest.raises(InputError, match="no ImageNet weights for 'resnet101'"):
        weights.imagenet_weights("resnet101")
    with pytest.raises(InputError) as err:
        weights.ultralytics_weights("yolov5su.pt")
    assert str(yolo_dir / "yolov5su.pt") in str(err.value) and "vsuite weights pull yolov5su.pt" in str(err.value)
    assert weights.ultralytics_weights("mine.pt") is None  # not a published name: the caller's file-not-found


def test_a_bare_ultralytics_name_resolves_in_its_weights_dir_only(yolo_dir, tmp_path, monkeypatch):
    from ultralytics.nn.tasks import torch_safe_load

    from common.config import config_section
    from industrial_qc.config import DEFAULT_CONFIG, DetectorConfig
    from industrial_qc.detector import build_model

    cfg = config_section(DetectorConfig, DEFAULT_CONFIG, "detector")
    monkeypatch.chdir(tmp_path)  # no yolov5nu.pt in the working directory either
    with pytest.raises(InputError, match=re.escape(str(yolo_dir / "yolov5nu.pt")) + ".*vsuite weights pull"):
        build_model(cfg, "yolov5nu.pt")
    pt = write_yolo_checkpoint(yolo_dir / "yolov5nu.pt")
    assert weights.ultralytics_weights("yolov5nu.pt") == pt
    model = build_model(cfg, "yolov5nu.pt")
    ref = torch_safe_load(str(pt), safe_only=True)[0]["model"].float().state_dict()
    got = model.model.state_dict()
    keys = [k for k in ref if k.endswith("conv.weight")]
    assert keys and all(torch.equal(got[k].float(), ref[k]) for k in keys)
    with pytest.raises(InputError, match="never downloaded"):
        build_model(cfg, "nope.pt")


def test_pull_checks_the_sha256_prefix_and_refuses_a_mismatch(torch_home, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    good = served / "resnet18.pth"
    torch.save(resnet_state("resnet18", seed=3), good)
    named = served / f"resnet18-{sha256(good)[:8]}.pth"
    good.rename(named)
    (served / "resnet34-b627a593.pth").write_bytes(b"not the weights")  # torchvision's name, wrong bytes
    with serve(served) as base:
        with monkeypatch.context() as m:  # an official-style name whose prefix is this file's hash
            m.setattr(weights, "torchvision_url", lambda arch: f"{base}/{named.name}")
            entry, what = weights.pull("resnet18")
            assert what == f"downloaded from {base}/{named.name}"
            assert entry.path == torch_home / "hub" / "checkpoints" / named.name
            assert entry.path.read_bytes() == named.read_bytes()
            assert weights.pull("resnet18")[1] == "already cached"
        with pytest.raises(InputError, match="does not start with b627a593.*refused"):
            weights.pull("resnet34", mirror=base)
    checkpoints = torch_home / "hub" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [named.name]  # nothing refused, no partial file left


def test_pull_of_an_ultralytics_checkpoint_loads_it_safely_first(yolo_dir, tmp_path):
    served = tmp_path / "served"
    write_yolo_checkpoint(served / "yolov5nu.pt")
    (served / "yolov5su.pt").write_bytes(b"not a checkpoint")
    entry, what = weights.pull("yolov5nu.pt", mirror=served.as_uri())  # file:// works as a mirror too
    assert entry.path == yolo_dir / "yolov5nu.pt" and sha256(entry.path) == sha256(served / "yolov5nu.pt")
    assert what.startswith("downloaded from file://")
    with serve(served) as base, pytest.raises(InputError, match="refused, not a loadable Ultralytics checkpoint"):
        weights.pull("yolov5su.pt", mirror=base)
    assert sorted(p.name for p in yolo_dir.iterdir()) == ["yolov5nu.pt"]
    with pytest.raises(InputError, match="download failed"):
        weights.pull("yolov5su.pt", mirror=(tmp_path / "missing").as_uri())
    with pytest.raises(InputError, match="unknown; expected one of resnet18"):
        weights.pull("vgg16")


def test_weights_cli_lists_the_caches_and_pulls(torch_home, yolo_dir, tmp_path):
    from common.cli import app

    served = tmp_path / "served"
    write_yolo_checkpoint(served / "yolov5su.pt")
    runner = CliRunner()
    res = runner.invoke(app, ["weights", "pull", "yolov5su.pt", "--mirror", served.as_uri()], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "yolov5su.pt: downloaded from" in res.output and "safe loader" in res.output
    res = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    lines = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") >= 4}
    assert "no: vsuite weights pull resnet18" in lines["resnet18"] and "yes (" in lines["yolov5su.pt"]
    assert str(torch_home) in lines["resnet50"] and str(yolo_dir) in lines["yolov5nu.pt"]


def test_vsuite_weights_pull_errors_are_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    vsuite = str(Path(sys.executable).with_name("vsuite"))
    out = subprocess.run([vsuite, "weights", "pull", "vgg16"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin", "TORCH_HOME": str(tmp_path)})
    assert out.returncode == 2 and "weights 'vgg16': unknown" in out.stderr and "Traceback" not in out.stderr


def test_medicalnet_pull_checks_the_backbone_and_the_lookup_stays_offline(torch_home, tmp_path):
    entry = weights.weights_entry("medicalnet_resnet10")
    assert entry.url == ("https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet10/resolve/main/"
                         "resnet_10_23dataset.pth")  # the file MONAI's own loader fetches
    assert entry.path == torch_home / "hub" / "checkpoints" / "medicalnet" / "resnet_10_23dataset.pth"
    with pytest.raises(InputError) as err:
        weights.medicalnet_weights(10)
    assert str(entry.path) in str(err.value) and "vsuite weights pull medicalnet_resnet10" in str(err.value)
    served = tmp_path / "served"
    state = write_medicalnet_file(served / "resnet_10_23dataset.pth", 10, seed=4)
    write_medicalnet_file(served / "resnet_18_23dataset.pth", 10)  # a resnet10 file under resnet18's name
    _, what = weights.pull("medicalnet_resnet10", mirror=served.as_uri())
    assert what.startswith("downloaded from") and weights.medicalnet_weights(10) == entry.path
    loaded = weights.medicalnet_state(entry.path, 10)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(InputError, match="refused, not a MedicalNet resnet18 backbone"):
        weights.pull("medicalnet_resnet18", mirror=served.as_uri())
    assert not weights.medicalnet_entry(18).path.exists()
