"""Training on two processes (``torchrun --nproc_per_node 2``, gloo on the CPU): the shared loop agrees on stages, a
resume and a deadline; the part classifier and the 3D CNN write the same run directory as one process does, rank 0
alone writes it (``ddp_worker.py`` makes any write by rank 1 into it fail), and both ranks end with the same
parameters and buffers. Without torchrun ``common.distributed`` is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from common import distributed
from common.checkpoints import load_checkpoint
from common.config import CONFIG_DIR

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
LAUNCH = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999",
          "TORCHELASTIC_RUN_ID": "test"}


def torchrun(mode: str, data: Path | str, out: Path, dump: Path, *overrides: str) -> None:
    """Run ``ddp_worker.py`` on two gloo processes, one torch thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER), mode,
           str(data), str(out), str(dump), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in LAUNCH:
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ranks(dump: Path, suffix: str = "") -> tuple[dict, dict]:
    return torch.load(dump / f"rank0{suffix}.pt"), torch.load(dump / f"rank1{suffix}.pt")


def assert_ranks_agree(r0: dict, r1: dict, best: Path) -> None:
    """DDP kept the trained parameters in step; after fit both ranks hold best.pt, buffers included."""
    assert r0["trained"] and same_tensors(r0["trained"], r1["trained"])
    assert same_tensors(r0["final"], r1["final"])
    assert same_tensors(load_checkpoint(best)["model"], r1["final"])  # the unwrapped module's names: no 'module.'
    assert r0["has_logits"] and not r1["has_logits"]  # rank 0 validates
    assert r0["history"] == r1["history"] and r0["stopped"] == r1["stopped"]


# ---------------------------------------------------------------- one process


def test_without_torchrun_every_call_answers_as_one_process(monkeypatch):
    for k in LAUNCH:
        monkeypatch.delenv(k, raising=False)
    assert not distributed.launched() and not distributed.active()
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (0, 0, 1)
    assert distributed.is_main() and distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    distributed.init(torch.device("cpu"))
    assert not distributed.active() and not torch.distributed.is_initialized()  # no process group
    done = []
    with distributed.main_first():
        done.append(1)
    distributed.barrier()
    assert done == [1] and not distributed.quiet_unless_main(Console()).quiet


def test_launch_variables_name_the_rank_and_hide_from_libraries(monkeypatch):
    for k, v in LAUNCH.items():
        monkeypatch.setenv(k, v)
    assert distributed.launched() and distributed.rank() == 1 and distributed.world_size() == 2
    assert not distributed.is_main() and distributed.quiet_unless_main(Console()).quiet
    with distributed.hidden_launch_env():  # what Ultralytics sees on rank 0 while it trains the detector
        assert not any(k in os.environ for k in LAUNCH) and not distributed.launched()
    assert all(os.environ[k] == v for k, v in LAUNCH.items())
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: a single process
    assert not distributed.launched() and distributed.is_main()


def test_the_worker_makes_a_write_into_the_run_directory_fail(tmp_path):
    """The teeth of "rank 1 writes nothing": its audit hook turns any such write into an error, the checkpoint
    writer's (torch.save writes in C++, but the atomic rename that publishes the file is audited) included."""
    run = tmp_path / "run"
    run.mkdir()
    code = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(WORKER.parent)!r})
from ddp_worker import forbid_writes_under
from common.checkpoints import save_checkpoint
run = Path({str(run)!r})
forbid_writes_under(run)
Path({str(tmp_path / "elsewhere.txt")!r}).write_text("fine")
for act in (lambda: (run / "sub").mkdir(), lambda: open(run / "x", "w"), lambda: (run / "y.json").write_text("{{}}"),
            lambda: save_checkpoint(run / "best.pt", {{"epoch": 1}})):
    try:
        act()
    except PermissionError:
        continue
    raise SystemExit("a write got through")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "elsewhere.txt").read_text() == "fine"
    assert {p.name for p in run.iterdir()} <= {"best.pt.tmp"}  # the C++ writer's temporary never became best.pt


# ---------------------------------------------------------------- two processes


def test_fit_agrees_on_stages_a_resume_and_one_ranks_deadline(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    torchrun("engine", "-", out, dump)
    assert files(out) == {"best.pt", "last.pt", "deadline/best.pt", "deadline/last.pt"}
    staged = ranks(dump)
    assert [h["stage"] for h in staged[0]["history"]] == [0, 1]  # DDP wrapped anew for the second stage
    assert same_tensors(staged[0]["trained"], staged[1]["trained"]) and same_tensors(staged[0]["final"],
                                                                                   staged[1]["final"])
    resumed = ranks(dump, "-1")
    assert [h["epoch"] for h in resumed[0]["history"]] == [1, 2, 3]  # the third epoch only was trained
    assert_ranks_agree(*resumed, out / "best.pt")
    late = ranks(dump, "-2")
    # rank 1 alone was past its deadline: both stopped after the first batch, none waits for the other
    assert late[0]["stopped"] == "time budget reached"
    assert [h["partial"] for h in late[0]["history"]] == [True]
    assert_ranks_agree(*late, out / "deadline" / "best.pt")

def test_part_classifier_on_two_processes_writes_the_run_of_one(tmp_path):
    from industrial_qc.config import load_qc_config
    from industrial_qc.part_train import train_part_run
    from industrial_qc.synth import SynthConfig
    from industrial_qc.synth_parts import synthesize_parts

    data = synthesize_parts(tmp_path / "data", SynthConfig(images=60, size=64, seed=3, image_format="png"),
                            "folders").data
    single = tmp_path / "single"
    train_part_run(data, load_qc_config(CONFIG_DIR / "industrial_qc" / "tiny.yaml", ["threads=1"]), single,
                   console=Console(quiet=True))
    out, dump = tmp_path / "run", tmp_path / "dump"
    torchrun("part", data, out, dump, "--set", "threads=1")
    assert files(out) == files(single)
    assert {"run.json", "part_classifier.onnx", "checkpoints/part/best.pt"} <= files(out)
    assert_ranks_agree(*ranks(dump), out / "checkpoints" / "part" / "best.pt")


def test_3d_cnn_on_two_processes_writes_the_run_of_one(tmp_path, med_tiny_data, med_tiny_run):
    single, _ = med_tiny_run
    out, dump, cache = tmp_path / "run", tmp_path / "dump", tmp_path / "cache"
    # a fresh cache: rank 0 fills it (the worker fails any write into it by rank 1), then rank 1 reads it
    torchrun("med", med_tiny_data, out, dump, "--set", f"data.cache_dir={cache}", "runtime.threads=1")
    assert files(out) == files(single)
    assert_ranks_agree(*ranks(dump), out / "checkpoints" / "best.pt")
    assert len(list(cache.glob("*/*/qa.json"))) >= 10  # the studies preprocessed once, by rank 0
