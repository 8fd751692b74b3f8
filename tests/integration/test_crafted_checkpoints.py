"""No data file runs code: crafted checkpoints and weights files are refused by every loader (QC training, the
shared engine, ``vsuite med eval``) without unpickling what they carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import InputError


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(path: Path, marker: Path, wrap: str | None = "model") -> Path:
    import torch

    payload = _RunsCode(marker) if wrap is None else {wrap: _RunsCode(marker), "labels": ["a", "b"]}
    torch.save(payload, path)
    return path


def test_no_checkpoint_or_weights_file_runs_code(tmp_path):
    from common.checkpoints import load_checkpoint
    from common.config import config_section
    from industrial_qc.classifier import build_classifier
    from industrial_qc.config import DEFAULT_CONFIG, DetectorConfig
    from industrial_qc.detector import build_model

    marker = tmp_path / "pwned"
    with pytest.raises(InputError, match="best.pt: not a readable checkpoint"):
        load_checkpoint(_crafted(tmp_path / "best.pt", marker))
    with pytest.raises(InputError, match="classifier.weights .*not a loadable state_dict"):
        build_classifier("resnet18", 3, weights=_crafted(tmp_path / "w.pt", marker))
    with pytest.raises(InputError, match="detector-weights .*refused"):
        build_model(config_section(DetectorConfig, DEFAULT_CONFIG, "detector"),
                    _crafted(tmp_path / "yolo.pt", marker, wrap="model"))
    assert not marker.exists(), "a crafted file ran code"


def test_med_eval_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    run = {"run_id": "x", "vertical": "medical3d", "labels": ["lesion", "normal"], "positive_label": "lesion",
           "config": {}}
    (run_dir / "run.json").write_text(json.dumps(run))
    marker = tmp_path / "pwned"
    _crafted(run_dir / "checkpoints" / "best.pt", marker)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n")
    proc = subprocess.run([sys.executable, "-m", "common.cli", "med", "eval", str(run_dir), str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "best.pt: not a readable checkpoint" in proc.stderr.replace("\n", "")
    assert not marker.exists(), "a crafted checkpoint ran code"
