"""The `vsuite med` commands through typer's runner: help, closed option sets, and errors without tracebacks."""

from __future__ import annotations

from typer.testing import CliRunner

from medical3d.cli import app

runner = CliRunner()


def test_every_command_has_help_with_an_example():
    for cmd in ("synth", "preprocess", "train", "eval"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example: vsuite med" in res.output, cmd


def test_bad_config_key_is_reported(tmp_path):
    res = runner.invoke(app, ["preprocess", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "preprocess.nope=1"])
    assert res.exit_code != 0
    assert "unknown key 'preprocess.nope'" in str(res.exception)


def test_closed_option_sets_show_their_choices_and_refuse_others(tmp_path):
    assert "mri|ct" in runner.invoke(app, ["synth", "--help"]).output
    res = runner.invoke(app, ["synth", str(tmp_path / "d"), "--modality", "xray"])
    assert res.exit_code == 2 and "xray" in res.output and not (tmp_path / "d").exists()
    res = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path), "--split", "holdout"])
    assert res.exit_code == 2 and "holdout" in res.output
