"""Bad inputs through the `vsuite` command itself: study names that are not UTF-8 scored in a subprocess (SimpleITK
would abort the process on them), and a run with a NaN threshold refused by `vsuite score`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from common.errors import InputError
from medical3d.writers import write_dicom_series
from tests.medical3d.helpers import META, make_run, phantom, write


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def _vsuite() -> list[str]:
    exe = Path(sys.executable).with_name("vsuite")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from common.cli import main; main()"]


def test_non_utf8_names_are_scored_in_a_subprocess_and_round_trip(run, tmp_path):
    """SimpleITK aborts the process on such a name: the exit code shows it. File, detached header and DICOM folder."""
    root = os.fsencode(tmp_path / "studies")
    os.mkdir(root)
    nifti = write(phantom(), root + b"/b_\xff.nii.gz")
    mhd = write(phantom(seed=1), root + b"/c_\xfe.mhd", compress=False)  # data file: plain_tmp.raw
    series = tmp_path / "series_tmp"
    write_dicom_series(sitk.GetImageFromArray(phantom(16, seed=2)), series)
    os.rename(series, root + b"/d_\xfd")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([*_vsuite(), "score", os.fsencode(run), root, "--out", os.fsencode(out)],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3
    assert {os.fsencode(r["source"]) for r in records} == {os.fsencode(nifti), os.fsencode(mhd), root + b"/d_\xfd"}
    assert all(r["status"] == "ok" for r in records), [r["reason"] for r in records]


def test_nan_threshold_refuses_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from common.cli import app

    bad = make_run(tmp_path / "bad", {**META, "threshold": float("nan")})
    study = write(phantom(), tmp_path / "study.nii.gz")
    result = CliRunner().invoke(app, ["score", str(bad), str(study), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert "threshold nan must be a finite number" in str(result.exception)
