"""``vsuite score`` on both engines: the local engine and Ray Data (a local Ray of 2 CPUs, started once for this
module on loopback and shut down after it) give the same records apart from timing fields, for QC parts (a corrupt
file, an empty one and a missing input among them; a part run's heatmaps too) and medical studies (a broken study
and a missing one among them); ``--resume`` on half-written outputs (a JSONL torn mid-line, a CSV with a killed
job's ledger, a partitioned Parquet folder finished by Ray) answers every input exactly once without rescoring what
was done; ``--inputs-from``; and the local engine never imports Ray."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common import cli
from common.errors import InputError
from common.results import dataset_parts, read_jsonl, read_records
from industrial_qc.data import load_dataset
from tests.apps.helpers import REPO
from tests.industrial_qc.part_helpers import make_part_run, write_part_image

BIG_SPOT = (30, 8, 20)  # x, y, side: a defect the part model fails (as in tests/industrial_qc/test_part_pipeline.py)
# Fields that measure time, not what was judged: left out when the engines' records are compared.
TIMING = {"timestamp", "seconds"}


def untimed(rec: dict) -> dict:
    """``rec`` without its timing fields: ``timestamp``, ``seconds`` and every ``*_ms`` / ``*_seconds`` field
    (decode_ms, latency_ms, detector/classifier timings, heatmap_ms; inference_ms, n4_seconds,
    preprocess_seconds)."""
    return {k: v for k, v in rec.items() if k not in TIMING and not k.endswith(("_ms", "_seconds"))}


def assert_same(got: list[dict], want: list[dict]) -> None:
    """The same records apart from timing fields; the message names the fields that differ."""
    assert len(got) == len(want)
    diff = [(i, k, g.get(k), w.get(k)) for i, (g, w) in enumerate(zip(map(untimed, got), map(untimed, want),
                                                                        strict=True))
            for k in sorted(set(g) | set(w)) if g.get(k) != w.get(k)]
    assert not diff, diff


def vsuite_score(*args: str) -> list[dict]:
    """``vsuite score ARGS`` in this process (so Ray work goes to this module's Ray); the records of its output."""
    res = CliRunner().invoke(cli.app, ["score", *args])
    assert res.exit_code == 0, (res.output, res.exception)
    return read_records(args[args.index("--out") + 1])


def vsuite_score_alone(*args: str) -> list[dict]:
    """``vsuite score ARGS`` in a fresh process, with one ONNX Runtime thread as a Ray actor of 1 CPU has: ONNX
    Runtime's sums depend on its thread count (probabilities 1e-9 apart), and this process's thread pool is
    whatever the tests before set it to."""
    env = {**os.environ, "VSUITE_ORT_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).with_name("vsuite")), "score", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_records(args[args.index("--out") + 1])


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray of 2 CPUs for this module's Ray jobs (``--engine ray`` uses a Ray this process started)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture
def parts(tmp_path, tiny_data) -> list[str]:
    """Inputs of a small mixed QC set: a folder of 5 test parts with a corrupt and an empty file, and a missing
    file (an input that matches nothing)."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for s in load_dataset(tiny_data).split("test")[:5]:
        shutil.copy2(s.image, folder / s.image.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    return [str(folder), str(tmp_path / "missing.png")]


@pytest.fixture
def studies(tmp_path, med_tiny_data) -> list[str]:
    """Inputs of a small mixed medical set: 3 studies of the tiny dataset (the DICOM one among them when there is
    one), a broken study and a missing one."""
    found = sorted((med_tiny_data.parent / "studies").iterdir())
    dicom = [p for p in found if p.is_dir()]
    picked = (dicom[:1] + [p for p in found if p.is_file()])[:3]
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    return [*map(str, picked), str(tmp_path / "broken.nii.gz"), str(tmp_path / "missing.nii.gz")]


def test_qc_engines_give_the_same_records(ray_session, tiny_run, parts, tmp_path):
    local = vsuite_score_alone(str(tiny_run), *parts, "--out", str(tmp_path / "local.jsonl"))
    ray = vsuite_score(str(tiny_run), *parts, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray",
                       "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "2")
    assert len(local) == 8  # 5 parts, corrupt, empty, missing: one record each
    assert [r["status"] for r in local].count("error") == 3
    assert_same(ray, local)


def test_part_run_heatmaps_are_the_same_on_both_engines(ray_session, tmp_path):
    run = make_part_run(tmp_path / "run", thresholds={"fail": 0.8, "review": 0.5, "score": "part"})
    folder = tmp_path / "parts"
    write_part_image(folder / "clean.png")
    write_part_image(folder / "fail.png", spot=BIG_SPOT)
    write_part_image(folder / "sub" / "fail.png", spot=(4, 40, 16))  # same stem: its own name on both engines
    local = vsuite_score(str(run), str(folder), "--out", str(tmp_path / "local" / "s.csv"))
    ray = vsuite_score(str(run), str(folder), "--out", str(tmp_path / "ray" / "s.csv"), "--engine", "ray",
                       "--workers", "1")
    assert [r["verdict"] for r in local] == ["PASS", "FAIL", "FAIL"]
    maps = sorted(p.name for p in (tmp_path / "local" / "s_heatmaps").iterdir())
    assert len(maps) == 2 and sorted(p.name for p in (tmp_path / "ray" / "s_heatmaps").iterdir()) == maps
    assert [r["heatmap"] and Path(r["heatmap"]).name for r in ray] == [r["heatmap"] and Path(r["heatmap"]).name
                                                                       for r in local]
    same = [{k: v for k, v in untimed(r).items() if k != "heatmap"} for r in ray]
    assert same == [{k: v for k, v in untimed(r).items() if k != "heatmap"} for r in local]


def test_medical_engines_give_the_same_records(ray_session, med_tiny_run, studies, tmp_path):
    run_dir, _ = med_tiny_run
    local = vsuite_score_alone(str(run_dir), *studies, "--out", str(tmp_path / "local.jsonl"))
    ray = vsuite_score(str(run_dir), *studies, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray",
                       "--workers", "1", "--batch-size", "2")
    assert [r["status"] for r in local] == ["ok", "ok", "ok", "error", "error"]
    assert_same(ray, local)


def test_resume_finishes_a_partitioned_parquet_output_on_a_ray_cluster(ray_session, tiny_run, parts, tmp_path):
    """A folder output: the local engine did three parts (one part file); a job in another process connects to
    this module's Ray with ``--address`` and adds the rest as a new part, leaving the cluster running."""
    files = sorted(str(p) for p in Path(parts[0]).iterdir())
    out = tmp_path / "scores"
    first = vsuite_score(str(tiny_run), *files[:3], "--out", f"{out}/")
    assert [p.name for p in dataset_parts(out)] == ["part-00000.parquet"]
    address = ray_session.get_runtime_context().gcs_address
    both = vsuite_score_alone(str(tiny_run), *parts, "--out", str(out), "--resume", "--engine", "ray",
                              "--address", address, "--workers", "1")
    assert [p.name for p in dataset_parts(out)] == ["part-00000.parquet", "part-00001.parquet"]
    assert both[:3] == first  # not rescored: the same rows, timestamps included
    assert sorted(r["source"] for r in both) == sorted([*files, str(Path(parts[1]).absolute())])  # each once
    assert [r["status"] for r in both].count("error") == 3
    assert ray_session.cluster_resources().get("CPU") == 2  # the cluster is still there


def test_too_many_ray_workers_is_an_input_error(ray_session, tiny_run, parts, tmp_path):
    res = CliRunner().invoke(cli.app, ["score", str(tiny_run), *parts, "--out", str(tmp_path / "s.jsonl"),
                                       "--engine", "ray", "--workers", "2"])
    assert isinstance(res.exception, InputError) and "leaves less than 0.5 of the cluster's 2 CPUs" in str(
        res.exception)


def test_resume_a_jsonl_torn_mid_line(tiny_run, parts, tmp_path):
    folder = Path(parts[0])
    files = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "scores.jsonl"
    first = vsuite_score(str(tiny_run), *files[:3], "--out", str(out))
    with open(out, "a") as f:  # the job was killed while writing the next record
        f.write(json.dumps({"source": files[3], "status": "ok"})[:25])
    vsuite_score(str(tiny_run), *parts, "--out", str(out), "--resume")
    records = read_jsonl(out)
    assert records[:3] == first  # kept as they were, not rescored
    assert sorted(r["source"] for r in records) == sorted([*files, str(Path(parts[1]).absolute())])


def test_resume_a_csv_with_a_killed_jobs_ledger(tiny_run, parts, tmp_path):
    folder = Path(parts[0])
    files = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "scores.csv"
    vsuite_score(str(tiny_run), *files[:2], "--out", str(out))
    # A second job got two more parts into its ledger, then was killed before writing the table.
    ledger = vsuite_score(str(tiny_run), *files[2:4], "--out", str(tmp_path / "ledger.jsonl"))
    shutil.copy(tmp_path / "ledger.jsonl", tmp_path / "scores.csv.partial.jsonl")
    before = read_records(out)
    records = vsuite_score(str(tiny_run), *parts, "--out", str(out), "--resume")
    assert not (tmp_path / "scores.csv.partial.jsonl").exists()
    for rec, old in zip(records, before, strict=False):  # kept as they were (a later record may add columns)
        assert {k: rec[k] for k in old} == old and all(rec[k] is None for k in set(rec) - set(old))
    assert [r["timestamp"] for r in records[2:4]] == [r["timestamp"] for r in ledger]
    assert sorted(r["source"] for r in records) == sorted([*files, str(Path(parts[1]).absolute())])
    # Without --resume the output is replaced, and a stale ledger goes with it.
    (tmp_path / "scores.csv.partial.jsonl").write_text(json.dumps({"source": "stale", "status": "ok"}) + "\n")
    again = vsuite_score(str(tiny_run), *files[:1], "--out", str(out))
    assert [r["source"] for r in again] == files[:1] and not (tmp_path / "scores.csv.partial.jsonl").exists()


def test_inputs_from_a_list_file(tiny_run, parts, tmp_path):
    folder = Path(parts[0])
    files = sorted(str(p) for p in folder.iterdir() if p.suffix == ".png")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# today's parts\n\n{files[0]}\n  {files[1]}  \n#{files[2]}\n\n")
    records = vsuite_score(str(tiny_run), files[3], "--inputs-from", str(listing), "--out", str(tmp_path / "s.csv"))
    assert [r["source"] for r in records] == [files[3], files[0], files[1]]
    res = CliRunner().invoke(cli.app, ["score", str(tiny_run), "--inputs-from", str(tmp_path / "nope.txt"),
                                       "--out", str(tmp_path / "t.csv")])
    assert isinstance(res.exception, InputError) and str(res.exception) == (
        f"{tmp_path / 'nope.txt'}: inputs list not found (--inputs-from)")
    res = CliRunner().invoke(cli.app, ["score", str(tiny_run), "--out", str(tmp_path / "t.csv")])
    assert isinstance(res.exception, InputError) and "no inputs" in str(res.exception)


def test_local_engine_does_not_import_ray(tiny_run, parts, tmp_path):
    code = ("import sys\nfrom common import cli\n"
            "try:\n    cli.app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('ray' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, "score", str(tiny_run), *parts, "--out",
                           str(tmp_path / "s.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 8
