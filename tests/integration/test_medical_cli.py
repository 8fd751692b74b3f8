"""`vsuite med synth` then `vsuite med preprocess` through typer's runner: studies in, volumes, bias fields and QA
records out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medical3d.cli import app

runner = CliRunner()


def test_synth_then_preprocess_writes_volumes_bias_and_qa(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--cases", "2", "--size", "24", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "manifest.csv").is_file()
    res = runner.invoke(app, ["preprocess", str(tmp_path / "d" / "studies"), "--out", str(tmp_path / "p"),
                              "--set", "preprocess.resample.spacing=[8.0,8.0,8.0]",
                              "--set", "preprocess.crop.size=[24,24,24]", "--set", "runtime.threads=2"])
    assert res.exit_code == 0, res.output
    qa = sorted((tmp_path / "p").glob("*_qa.json"))
    assert len(qa) == 2
    record = json.loads(qa[0].read_text())
    assert record["output_size"] == [24, 24, 24] and record["cv_after"] is not None
    assert len(list((tmp_path / "p").glob("*_preprocessed.nii.gz"))) == 2
    assert len(list((tmp_path / "p").glob("*_bias.nii.gz"))) == 2
