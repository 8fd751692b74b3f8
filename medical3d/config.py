"""Config models of the medical3d vertical; every default lives in ``configs/medical3d/default.yaml``.

No torch here: ``vsuite med preprocess`` and the scorer load these. The preprocessing section travels inside
``model.onnx`` metadata and is re-validated by the scorer (``preprocess_from_metadata``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from common.config import CONFIG_DIR, TrainConfig, config_section, load_config
from common.config import StrictModel as _CommonStrictModel

DEFAULT_CONFIG = CONFIG_DIR / "medical3d" / "default.yaml"
DEMO_CONFIG = CONFIG_DIR / "medical3d" / "demo.yaml"


class StrictModel(_CommonStrictModel):
    """Unknown keys rejected (as everywhere) and no NaN/inf floats: the preprocessing section comes back from
    model.onnx metadata, where a NaN would otherwise pass every check and reach SimpleITK."""

    model_config = ConfigDict(**_CommonStrictModel.model_config, allow_inf_nan=False)


Modality = Literal["mri", "ct"]
Spacing = Annotated[float, Field(gt=0)]
Triple = tuple[Spacing, Spacing, Spacing]
IntTriple = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class ReadConfig(StrictModel):
    """What a study must look like to be accepted (``io.read_study``)."""

    min_slices: int = Field(ge=1)  # along the shortest axis
    # A DICOM slice gap that differs from the median gap by more than this fraction is a missing slice.
    gap_tolerance: float = Field(gt=0, lt=1)


class OrientConfig(StrictModel):
    enabled: bool
    code: Literal["LPS", "RAS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI"]


class N4Config(StrictModel):
    """N4 bias-field correction (``sitk.N4BiasFieldCorrectionImageFilter``); applied to MRI only.

    The fit runs on an image shrunk by ``shrink_factor`` inside an Otsu mask; the log bias field is then
    evaluated on the full-resolution grid and divided out.
    """

    enabled: bool
    shrink_factor: int = Field(ge=1, le=16)
    # One entry per fitting level; the B-spline mesh doubles at every level.
    # four levels of 30 iterations reach ANTs' residual CV in well under its time (benchmarks/RESULTS.md)
    iterations: list[int] = Field(min_length=1)
    convergence_threshold: float = Field(ge=0)
    control_points: int = Field(ge=4)  # at the first level, per axis (>= spline_order + 1)
    spline_order: int = Field(ge=1, le=3)
    histogram_bins: int = Field(ge=10)
    fwhm: float = Field(gt=0)  # bias-field FWHM of the deconvolution kernel
    wiener_noise: float = Field(gt=0)
    otsu_bins: int = Field(ge=8)

    @model_validator(mode="after")
    def _points_vs_order(self) -> N4Config:
        if self.control_points <= self.spline_order:
            raise ValueError(f"control_points ({self.control_points}) must exceed spline_order ({self.spline_order})")
        return self


class ResampleConfig(StrictModel):
    spacing: Triple  # mm, x y z of the canonical grid
    interpolator: Literal["linear", "bspline"]
    antialias: bool  # Gaussian pre-smoothing when the target spacing is coarser than the input
    # Largest resampled grid: 512^3 float32 is 0.5 GiB a copy; only a wrong header spacing or size comes near it.
    max_voxels: int = Field(ge=1)


class CropConfig(StrictModel):
    size: IntTriple  # voxels, x y z; centred on the foreground box


class IntensityConfig(StrictModel):
    ct_window: tuple[float, float]  # HU, clipped and scaled to [0, 1]
    zscore_clip: float = Field(gt=0)  # MRI: z-scores in the foreground mask, clipped to +-clip

    @model_validator(mode="after")
    def _window_order(self) -> IntensityConfig:
        lo, hi = self.ct_window
        if hi <= lo:
            raise ValueError(f"ct_window: upper bound {hi} must exceed lower bound {lo}")
        return self


class PreprocessConfig(StrictModel):
    """Everything between a study on disk and the network input; stored in model.onnx for the scorer."""

    modality: Modality
    read: ReadConfig
    orient: OrientConfig
    n4: N4Config
    resample: ResampleConfig
    crop: CropConfig
    intensity: IntensityConfig


class DataConfig(StrictModel):
    labels: list[str] | None  # class order; default: sorted labels of the manifest
    positive_label: str  # the class whose sensitivity the threshold targets
    split_fractions: tuple[float, float, float]  # train/val/test when no split column
    seed: int
    cache_dir: Path | None  # default: $VSUITE_CACHE/medical3d or ~/.cache/vision-suite/medical3d

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions {self.split_fractions} must be >= 0 and sum to 1")
        return self


class VerdictConfig(StrictModel):
    """Positive when p(positive) >= threshold, chosen for ``target_sensitivity`` on the evidence of
    ``threshold_from`` (validation, or out-of-fold predictions over train+val: ``medical3d.kfold``); REVIEW when
    the calibrated chance the call is wrong exceeds ``review_error`` (``medical3d.verdict.uncertainty_edges``), or,
    with ``review_error`` null, when p lies within ``review_band`` of the threshold and between the evidence
    negatives and positives nearest to it (``medical3d.verdict.review_edges``). ``confidence``: of the lower bound
    that says whether the evidence supports the target (``medical3d.operating``)."""

    target_sensitivity: float = Field(gt=0, le=1)
    review_band: float = Field(ge=0, lt=0.5)
    review_error: float | None = Field(gt=0, lt=0.5)
    threshold_from: Literal["val", "kfold"]
    folds: int = Field(ge=2, le=20)
    kfold_budget_share: float = Field(gt=0, lt=1)
    confidence: float = Field(gt=0, lt=1)


class ModelConfig(StrictModel):
    network: Literal["cnn3d", "densenet121", "resnet10", "resnet18", "resnet34"]
    weights: Literal["medicalnet"] | None  # resnet*: MedicalNet 3D weights from the local cache (vsuite weights pull)
    width: int = Field(ge=4)  # cnn3d: channels of the first block (doubles per block)
    dropout: float = Field(ge=0, lt=1)
    norm: Literal["group", "batch", "instance", "none"]  # cnn3d: normalisation after every conv
    # cnn3d: fixed Hessian blob-filter scales (voxels) in front of the network; [] = raw volume only
    blob_scales: list[Annotated[float, Field(gt=0, le=8)]]
    tta: Literal["none", "flips"]  # test-time augmentation (medical3d.tta): mean logits over flipped views


class AugmentConfig(StrictModel):
    """MONAI 3D augmentation applied to (1, D, H, W) training volumes."""

    enabled: bool
    flip_prob: float = Field(ge=0, le=1)  # per axis
    affine_prob: float = Field(ge=0, le=1)
    rotate_deg: float = Field(ge=0)
    scale: float = Field(ge=0)
    translate_vox: float = Field(ge=0)
    intensity_prob: float = Field(ge=0, le=1)
    intensity_scale: float = Field(ge=0)
    intensity_shift: float = Field(ge=0)
    noise_prob: float = Field(ge=0, le=1)
    noise_std: float = Field(ge=0)
    bias_field_prob: float = Field(ge=0, le=1)
    # MONAI degree-3 fields: 0.03 gives gains of about 0.9-1.45; 0.3 would give up to 30x and wreck the volume.
    bias_field_coeff: float = Field(ge=0, le=0.1)
    contrast_prob: float = Field(ge=0, le=1)
    contrast_gamma: float = Field(ge=0, le=0.9)  # gamma drawn in [1 - g, 1 + g] (MONAI RandAdjustContrast)
    blur_prob: float = Field(ge=0, le=1)
    blur_sigma: tuple[Annotated[float, Field(gt=0, le=4)], Annotated[float, Field(gt=0, le=4)]]  # voxels, per axis
    thick_slice_prob: float = Field(ge=0, le=1)
    thick_slice_max_factor: int = Field(ge=2, le=8)  # slices k = 2..max voxels thick along one random axis
    polarity_prob: float = Field(ge=0, le=1)  # findings mirrored about the body's median intensity

    @model_validator(mode="after")
    def _sigma_order(self) -> AugmentConfig:
        if self.blur_sigma[1] < self.blur_sigma[0]:
            raise ValueError(f"blur_sigma: upper bound {self.blur_sigma[1]} is below lower bound {self.blur_sigma[0]}")
        return self


class RuntimeConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"]
    threads: int | None = Field(ge=1)  # torch and SimpleITK threads; None = all cores
    seed: int
    gradcam_limit: int = Field(ge=0)  # Grad-CAM volumes written per eval


class MedicalConfig(StrictModel):
    """The whole medical3d config (configs/medical3d/default.yaml)."""

    preprocess: PreprocessConfig
    data: DataConfig
    model: ModelConfig
    augment: AugmentConfig
    train: TrainConfig
    verdict: VerdictConfig
    runtime: RuntimeConfig


def load_medical_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> MedicalConfig:
    """Config from ``path`` deep-merged over configs/medical3d/default.yaml, with ``--set`` overrides applied."""
    return load_config(MedicalConfig, path, overrides, default_path=DEFAULT_CONFIG)


def preprocess_from_metadata(meta: dict) -> PreprocessConfig:
    """The preprocessing section stored in a run's model.onnx, keys added since then taken from default.yaml."""
    return config_section(PreprocessConfig, DEFAULT_CONFIG, "preprocess", **meta)
