"""Test-time augmentation (medical3d.tta): the mean logits over flipped views; the scorer (model.onnx) and
evaluate's torch path give the same TTA probabilities; a model whose metadata names an unknown mode refuses to
load, naming the model; a model exported before TTA existed scores without it."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from common.errors import InputError
from medical3d.config import ModelConfig
from medical3d.tta import TTA_MODES, tta_logits, tta_views
from tests.medical3d.helpers import META, make_run


def linear_run(seed: int = 0, classes: int = 2):
    """A fixed random linear model on (B, 1, 4, 5, 6) volumes: not symmetric, so every flip changes its output."""
    w = np.random.default_rng(seed).normal(size=(4 * 5 * 6, classes))

    def run(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.flags.c_contiguous
        return x.reshape(len(x), -1) @ w

    return run


def test_modes_match_the_config_literal_and_views_are_distinct():
    assert typing.get_args(ModelConfig.model_fields["tta"].annotation) == TTA_MODES
    assert tta_views("none") == [()]
    views = tta_views("flips")
    assert views[0] == () and len(set(views)) == len(views) == 4 and {a for v in views for a in v} == {2, 3, 4}
    with pytest.raises(ValueError, match="unknown TTA mode 'rotate'"):
        tta_views("rotate")


def test_none_is_the_model_itself_and_flips_is_the_mean_over_flipped_inputs():
    x = np.random.default_rng(1).normal(size=(3, 1, 4, 5, 6)).astype(np.float32)
    run = linear_run()
    np.testing.assert_allclose(tta_logits(run, x, "none"), run(x), rtol=1e-6)
    views = [x, x[..., ::-1], x[:, :, :, ::-1], x[:, :, ::-1]]
    want = np.mean([run(np.ascontiguousarray(v)) for v in views], axis=0)
    got = tta_logits(run, x, "flips")
    assert got.shape == (3, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, run(x), atol=1e-3)


def test_scorer_and_torch_path_agree_with_flips(med_tiny_run, med_tiny_data, tmp_path):
    """The session's tiny run exported again with model.tta=flips: StudyScorer (onnxruntime, from the metadata)
    and evaluate.predict_logits (torch, from the config) give the same probabilities for a study."""
    from medical3d.data import load_cases
    from medical3d.evaluate import load_run_model, predict_logits
    from medical3d.pipeline import StudyScorer
    from medical3d.preprocess import preprocess_study
    from medical3d.train import export_model

    run_dir, _ = med_tiny_run
    model, cfg, rule, _ = load_run_model(run_dir)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"tta": "flips"})})
    export_model(model, cfg, rule, tmp_path)
    scorer = StudyScorer(tmp_path / "model.onnx")
    assert scorer.model.metadata["tta"] == "flips" and scorer.tta == "flips"
    study = load_cases(med_tiny_data)[0].path
    record = scorer.score_study(study)
    assert record["status"] == "ok", record
    x = preprocess_study(study, cfg.preprocess).array()
    want = rule.probabilities(predict_logits(model, [x], tta=cfg.model.tta))[0]
    np.testing.assert_allclose([record["probabilities"][label] for label in rule.labels], want, atol=1e-4)
    np.testing.assert_allclose(scorer.predict_array(x[None])[0], want, atol=1e-4)
    plain = predict_logits(model, [x])
    assert np.abs(predict_logits(model, [x], tta="flips") - plain).max() > 1e-6  # the views did differ


def test_unknown_tta_in_metadata_refuses_to_load_naming_the_model(tmp_path):
    from medical3d.pipeline import StudyScorer

    bad = make_run(tmp_path / "bad", {**META, "tta": "rotations"})
    with pytest.raises(InputError) as err:
        StudyScorer(bad / "model.onnx")
    assert str(err.value).startswith(str(bad / "model.onnx")) and "tta 'rotations'" in str(err.value)
    assert StudyScorer(make_run(tmp_path / "old", META) / "model.onnx").tta == "none"  # exported before TTA
