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


# ---------------------------------------------------------------- medical3d
# A tiny synthetic MRI dataset (32^3 studies) and one tiny trained medical3d run, shared by tests/medical3d and the
# medical flows in tests/integration. Prefixed med_ so they never shadow the QC fixtures above.

MED_TINY_CONFIG = CONFIG_DIR / "medical3d" / "tiny.yaml"


@pytest.fixture(scope="session")
def med_quiet_console():
    from rich.console import Console

    return Console(quiet=True)


@pytest.fixture(scope="session")
def med_tiny_data(tmp_path_factory) -> Path:
    """12 MRI phantoms of ~32^3 voxels (some DICOM), manifest.csv without a split column."""
    from medical3d.synth import synth_dataset

    out = tmp_path_factory.mktemp("med_data")
    return synth_dataset(out, cases=12, modality="mri", seed=7, size=32, dicom_fraction=0.25)


@pytest.fixture(scope="session")
def med_tiny_cfg(tmp_path_factory):
    from medical3d.config import load_medical_config

    cache = tmp_path_factory.mktemp("med_cache")
    return load_medical_config(MED_TINY_CONFIG, [f"data.cache_dir={cache}"])


@pytest.fixture(scope="session")
def med_tiny_run(med_tiny_data, med_tiny_cfg, tmp_path_factory, med_quiet_console):
    """One epoch of the tiny CNN on the tiny dataset: the run directory and its TrainResult."""
    from medical3d.train import train

    run_dir = tmp_path_factory.mktemp("med_runs") / "tiny"
    result = train(med_tiny_data, med_tiny_cfg, run_dir, console=med_quiet_console)
    return run_dir, result
