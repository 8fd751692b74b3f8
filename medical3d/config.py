"""Config models of the medical3d vertical that the torch-free side (preprocessing, scoring) needs.

The full training config (``pipeline.MedicalConfig``) adds the training section from ``common.engine``, which
imports torch, so it lives on the torch side. The preprocessing section travels inside ``model.onnx`` metadata
and is re-validated here by the scorer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from common.config import CONFIG_DIR
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

    min_slices: int = Field(default=8, ge=1)  # along the shortest axis
    # A DICOM slice gap that differs from the median gap by more than this fraction is a missing slice.
    gap_tolerance: float = Field(default=0.2, gt=0, lt=1)


class OrientConfig(StrictModel):
    enabled: bool = True
    code: Literal["LPS", "RAS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI"] = "LPS"


class N4Config(StrictModel):
    """N4 bias-field correction (``sitk.N4BiasFieldCorrectionImageFilter``); applied to MRI only.

    The fit runs on an image shrunk by ``shrink_factor`` inside an Otsu mask; the log bias field is then
    evaluated on the full-resolution grid and divided out.
    """

    enabled: bool = True
    shrink_factor: int = Field(default=4, ge=1, le=16)
    # One entry per fitting level; the B-spline mesh doubles at every level.
    # Tuned on the 160x192x192 benchmark phantom: four levels reach ANTs' residual CV; 30 iterations per level
    # (instead of ANTs' 50) and an early stop at 1e-6 keep the fit well under half of ANTs' time.
    iterations: list[int] = Field(default_factory=lambda: [30, 30, 30, 30], min_length=1)
    convergence_threshold: float = Field(default=1e-6, ge=0)
    control_points: int = Field(default=4, ge=4)  # at the first level, per axis (>= spline_order + 1)
    spline_order: int = Field(default=3, ge=1, le=3)
    histogram_bins: int = Field(default=200, ge=10)
    fwhm: float = Field(default=0.15, gt=0)  # bias-field FWHM of the deconvolution kernel
    wiener_noise: float = Field(default=0.01, gt=0)
    otsu_bins: int = Field(default=128, ge=8)

    @model_validator(mode="after")
    def _points_vs_order(self) -> N4Config:
        if self.control_points <= self.spline_order:
            raise ValueError(f"control_points ({self.control_points}) must exceed spline_order ({self.spline_order})")
        return self


class ResampleConfig(StrictModel):
    spacing: Triple = (2.0, 2.0, 2.0)  # mm, x y z of the canonical grid
    interpolator: Literal["linear", "bspline"] = "linear"
    antialias: bool = True  # Gaussian pre-smoothing when the target spacing is coarser than the input
    # Largest resampled grid: 512^3 float32 is 0.5 GiB a copy; a 500 x 500 x 2000 mm whole-body CT at 2 mm is
    # 62.5M voxels, so only a wrong header spacing or size comes near it. Runs without the key get this default.
    max_voxels: int = Field(default=512**3, ge=1)


class CropConfig(StrictModel):
    size: IntTriple = (96, 96, 96)  # voxels, x y z; centred on the foreground box


class IntensityConfig(StrictModel):
    ct_window: tuple[float, float] = (-150.0, 250.0)  # HU, clipped and scaled to [0, 1]
    zscore_clip: float = Field(default=5.0, gt=0)  # MRI: z-scores in the foreground mask, clipped to +-clip

    @model_validator(mode="after")
    def _window_order(self) -> IntensityConfig:
        lo, hi = self.ct_window
        if hi <= lo:
            raise ValueError(f"ct_window: upper bound {hi} must exceed lower bound {lo}")
        return self


class PreprocessConfig(StrictModel):
    """Everything between a study on disk and the network input; stored in model.onnx for the scorer."""

    modality: Modality = "mri"
    read: ReadConfig = Field(default_factory=ReadConfig)
    orient: OrientConfig = Field(default_factory=OrientConfig)
    n4: N4Config = Field(default_factory=N4Config)
    resample: ResampleConfig = Field(default_factory=ResampleConfig)
    crop: CropConfig = Field(default_factory=CropConfig)
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)


class DataConfig(StrictModel):
    labels: list[str] | None = None  # class order; default: sorted labels of the manifest
    positive_label: str = "lesion"  # the class whose sensitivity the threshold targets
    split_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)  # train/val/test when no split column
    seed: int = 0
    cache_dir: Path | None = None  # default: $VSUITE_CACHE/medical3d or ~/.cache/vision-suite/medical3d

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions {self.split_fractions} must be >= 0 and sum to 1")
        return self


class VerdictConfig(StrictModel):
    """Positive when p(positive) >= threshold, chosen on validation for ``target_sensitivity``; REVIEW when
    p lies within ``review_band`` of the threshold and between the validation negatives and positives nearest
    to it (``medical3d.pipeline.review_edges``)."""

    target_sensitivity: float = Field(default=0.95, gt=0, le=1)
    review_band: float = Field(default=0.1, ge=0, lt=0.5)


class ModelConfig(StrictModel):
    network: Literal["cnn3d", "densenet121", "resnet18", "resnet34"] = "cnn3d"
    width: int = Field(default=8, ge=4)  # cnn3d: channels of the first block (doubles per block)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    norm: Literal["group", "batch", "instance", "none"] = "group"  # cnn3d: normalisation after every conv
    # cnn3d: fixed Hessian blob-filter scales (voxels) in front of the network; [] = raw volume only
    blob_scales: list[Annotated[float, Field(gt=0, le=8)]] = Field(default_factory=lambda: [1.0, 1.5, 2.0])


class AugmentConfig(StrictModel):
    """MONAI 3D augmentation applied to (1, D, H, W) training volumes."""

    enabled: bool = True
    flip_prob: float = Field(default=0.5, ge=0, le=1)  # per axis
    affine_prob: float = Field(default=0.5, ge=0, le=1)
    rotate_deg: float = Field(default=10.0, ge=0)
    scale: float = Field(default=0.05, ge=0)
    translate_vox: float = Field(default=4.0, ge=0)
    intensity_prob: float = Field(default=0.5, ge=0, le=1)
    intensity_scale: float = Field(default=0.1, ge=0)
    intensity_shift: float = Field(default=0.1, ge=0)
    noise_prob: float = Field(default=0.3, ge=0, le=1)
    noise_std: float = Field(default=0.05, ge=0)
    bias_field_prob: float = Field(default=0.3, ge=0, le=1)
    # MONAI degree-3 fields: 0.03 gives gains of about 0.9-1.45; 0.3 would give up to 30x and wreck the volume.
    bias_field_coeff: float = Field(default=0.03, ge=0, le=0.1)


class RuntimeConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1)  # torch and SimpleITK threads; None = all cores
    seed: int = 0
    gradcam_limit: int = Field(default=8, ge=0)  # Grad-CAM volumes written per eval
