import pytest

from common.errors import InputError
from common.rundir import fingerprint_files, read_run_json, update_run_json, write_run_json


def test_run_json_round_trip_and_errors(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i}.txt").write_text(str(i))
    files = list((tmp_path / "data").iterdir())
    fp = fingerprint_files(files, root=tmp_path)
    assert fp == fingerprint_files(reversed(files), root=tmp_path)
    run = write_run_json(tmp_path / "run1", vertical="medical3d", labels=["neg", "pos"], config={"a": 1},
                         data_fingerprint=fp, metrics={"auroc": 0.9})
    assert run["run_id"].startswith("run1-")
    back = read_run_json(tmp_path / "run1")
    assert back["labels"] == ["neg", "pos"] and back["versions"]["python"]
    update_run_json(tmp_path / "run1", metrics={"auroc": 0.95})
    assert read_run_json(tmp_path / "run1")["metrics"]["auroc"] == 0.95
    with pytest.raises(InputError, match="run directory not found"):
        read_run_json(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="run.json: missing"):
        read_run_json(tmp_path / "empty")
    (tmp_path / "empty" / "run.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_run_json(tmp_path / "empty")
