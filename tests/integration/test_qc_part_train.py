"""`vsuite qc synth --layout folders|csv` then `vsuite qc train DATA` on image-level parts: the CLI dispatches on the
kind of DATA, trains a part classifier and writes its run directory; bad image-level data ends in one message that
names the problem (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from common.config import CONFIG_DIR
from common.inference import OnnxModel
from common.rundir import read_run_json
from industrial_qc.cli import app

runner = CliRunner()
TINY = str(CONFIG_DIR / "industrial_qc" / "tiny.yaml")
REPO = Path(__file__).resolve().parents[2]


def test_synth_folders_then_train_through_the_cli(tmp_path):
    data = tmp_path / "parts"
    res = runner.invoke(app, ["synth", str(data), "--layout", "folders", "--images", "60", "--size", "64",
                              "--format", "png", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in data.iterdir()) == ["test", "train", "val"]
    assert sorted(p.name for p in (data / "val").iterdir()) == ["crack", "good", "pit", "scratch", "stain"]
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(data), "--config", TINY, "--out", str(out), "--max-minutes", "5"])
    assert res.exit_code == 0, res.output
    assert "val AUROC" in res.output and "review threshold" in res.output
    run = read_run_json(out)
    assert run["mode"] == "part" and run["config"]["max_minutes"] == 5 and set(run["model_sha256"]) >= {
        "part_classifier.onnx", run["models"]["line"]}
    model = OnnxModel(out / run["models"]["line"])
    assert model.output_names == ["logits", "cam"] and model.metadata["thresholds"]["score"] == "part"


def test_synth_csv_without_splits_then_train(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "c"), "--layout", "csv", "--no-splits", "--images", "40",
                              "--size", "48", "--format", "png"])
    assert res.exit_code == 0, res.output
    manifest = tmp_path / "c" / "labels.csv"
    assert manifest.read_text().splitlines()[0] == "path,label"
    res = runner.invoke(app, ["train", str(manifest), "--config", TINY, "--out", str(tmp_path / "run"),
                              "--set", "part.image_size=32", "--set", "part.line_precision=fp32"])
    assert res.exit_code == 0, res.output
    run = read_run_json(tmp_path / "run")
    assert run["made_splits"] == ["train", "val", "test"] and run["models"]["line"] == "part_classifier.onnx"


def test_bad_part_data_is_one_message_naming_the_class(tmp_path):
    import cv2
    import numpy as np

    for cls, n in (("good", 3), ("dent", 1)):
        for i in range(n):
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "d" / cls / f"{i}.png"), np.full((40, 40, 3), 40 * i + 20, np.uint8))
    proc = subprocess.run([sys.executable, "-m", "common.cli", "qc", "train", str(tmp_path / "d"), "--config", TINY,
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    said = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "class 'dent' has images only in split 'train', none in val" in said and "Traceback" not in said
    assert not (tmp_path / "run" / "run.json").exists()
