"""Shared fixtures: one tiny synthetic QC dataset (96 px) and one tiny trained QC run (one epoch per stage), built
once per session so every end-to-end and reliability test reuses them (~30 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import CONFIG_DIR

TINY_CONFIG = CONFIG_DIR / "industrial_qc" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from industrial_qc.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("qc_data")
    rep = synthesize(out, SynthConfig(images=32, size=96, seed=3, image_format="png"))
    return rep.data_yaml


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    from rich.console import Console

    from industrial_qc.config import load_qc_config
    from industrial_qc.train import train_run

    run_dir = tmp_path_factory.mktemp("qc_runs") / "tiny"
    cfg = load_qc_config(TINY_CONFIG)
    train_run(tiny_data, cfg, run_dir, console=Console(quiet=True))
    return run_dir
