"""The QC CLI surface: every command's help shows an example; ``qc synth`` writes a dataset."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from industrial_qc.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["synth", "train", "eval", "inspect"])
def test_help_has_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"vsuite qc {command}" in result.output


def test_synth_command(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--images", "6", "--size", "64", "--seed", "2"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "d" / "data.yaml").read_text())
    assert data["names"] == ["scratch", "pit", "stain", "crack"]
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 6
