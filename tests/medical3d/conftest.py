"""Shared fixtures: a tiny synthetic MRI dataset (32^3 studies) and one tiny trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from common.config import CONFIG_DIR

TINY_CONFIG = CONFIG_DIR / "medical3d" / "tiny.yaml"


@pytest.fixture(scope="session")
def quiet_console() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 MRI phantoms of ~32^3 voxels (some DICOM), manifest.csv without a split column."""
    from medical3d.synth import synth_dataset

    out = tmp_path_factory.mktemp("med_data")
    return synth_dataset(out, cases=12, modality="mri", seed=7, size=32, dicom_fraction=0.25)


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    from medical3d.pipeline import load_medical_config

    cache = tmp_path_factory.mktemp("med_cache")
    return load_medical_config(TINY_CONFIG, [f"data.cache_dir={cache}"])


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tiny_cfg, tmp_path_factory, quiet_console):
    """One epoch of the tiny CNN on the tiny dataset: the run directory and its TrainResult."""
    from medical3d.pipeline import train

    run_dir = tmp_path_factory.mktemp("med_runs") / "tiny"
    result = train(tiny_data, tiny_cfg, run_dir, console=quiet_console)
    return run_dir, result
