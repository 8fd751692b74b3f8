"""Typed config of the industrial_qc vertical; every default lives in ``configs/industrial_qc/default.yaml``.

Types and bounds only; no torch. Inference reads run.json and the ONNX metadata, not this config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.config import CONFIG_DIR, StrictModel, TrainConfig, load_config

DEFAULT_CONFIG = CONFIG_DIR / "industrial_qc" / "default.yaml"



class DetectorConfig(StrictModel):
    """Stage 1: Ultralytics YOLO built from yaml (never downloaded), tuned for recall."""

    model: Literal["yolov5nu.yaml", "yolov5su.yaml"]
    weights: str | None  # local .pt, or a published name (yolov5nu.pt) from Ultralytics' weights dir
    imgsz: int = Field(ge=32)
    epochs: int = Field(ge=1)  # upper bound; with --max-minutes the time budget decides
    batch: int = Field(ge=1)
    patience: int = Field(ge=1)
    workers: int = Field(ge=0)  # data-loader processes; 0: augment between steps (see default.yaml)
    cache: bool
    optimizer: Literal["auto", "SGD", "Adam", "AdamW"]
    lr0: float = Field(gt=0)
    cos_lr: bool
    warmup_epochs: float = Field(ge=0)  # Ultralytics: 3; a CPU budget buys few epochs
    close_mosaic: int = Field(ge=0)
    mosaic: float = Field(ge=0, le=1)
    fliplr: float = Field(ge=0, le=1)
    flipud: float = Field(ge=0, le=1)
    scale: float = Field(ge=0, lt=1)
    translate: float = Field(ge=0, lt=1)
    degrees: float = Field(ge=0, le=180)
    hsv_h: float = Field(ge=0, le=1)
    hsv_s: float = Field(ge=0, le=1)
    hsv_v: float = Field(ge=0, le=1)
    box: float = Field(gt=0)
    cls: float = Field(gt=0)
    # Input transform (industrial_qc/flatfield.py): flat-field + contrast normalisation in front of the detector,
    # in training and on the line; "none" feeds the raw image as plain Ultralytics does.
    input_norm: Literal["flatfield", "none"]
    flatfield_sigma: float = Field(gt=0, le=1)  # background blur, fraction of the image side
    flatfield_gain: float = Field(gt=0, le=127)  # output RMS in grey levels around 128
    nbs: int = Field(ge=1)  # nominal batch: 16 (not 64) = 4x more optimizer steps per CPU minute
    # Line-time confidence: chosen on val as the highest value in [min_conf, conf] that still finds
    # target_box_recall of the val defects the detector finds at min_conf among the max_det candidates; stage 2
    # removes the false alarms.
    conf: float = Field(gt=0, lt=1)
    min_conf: float = Field(gt=0, lt=1)
    target_box_recall: float = Field(gt=0, le=1)
    iou: float = Field(gt=0, le=1)  # class-agnostic NMS: overlapping candidates make one crop
    max_det: int = Field(ge=1)
    # Each part's best min_candidates detections (down to min_conf) go to stage 2 even when they score below the line
    # confidence: a part the detector barely sees is reviewed by the classifier instead of passing unseen.
    min_candidates: int = Field(ge=0)
    # bf16 autocast when training on a CPU with native bf16 (AMX / AVX512-BF16): more epochs per minute there;
    # ignored (fp32) on other CPUs, where bf16 is emulated and slower.
    cpu_bf16: bool
    channels_last: bool
    # Weight average of the trained detector (what is validated and saved): its decay ramps up as
    # ema_decay * (1 - exp(-updates / ema_tau)).
    ema_decay: float = Field(gt=0, lt=1)
    ema_tau: float = Field(gt=0)
    # Validation (a full val-split pass: not cheap on a CPU) every val_every epochs, and every epoch over the
    # last val_last epochs (mosaic off, where the best weights come from) and whenever Ultralytics needs it (final
    # epoch, time up, early stop close). Unvalidated epochs never become best.pt. Ultralytics: every epoch (1).
    val_every: int = Field(ge=1)
    val_last: int = Field(ge=0)
    # In-image defect copy-paste (industrial_qc/paste.py): the share of training images with defects that get one
    # more copy of each, on their own surface, before mosaic. 0 turns it off.
    paste: float = Field(ge=0, le=1)
    # Where Ultralytics trains stage 1: None = the run's device; "cpu"; a GPU index; several ("0,1" or [0, 1]):
    # Ultralytics then runs its own DDP over them. Under torchrun only rank 0 trains the detector, with this list.
    device: str | None = None

    @field_validator("device", mode="before")
    @classmethod
    def _device_list(cls, value: object) -> str | None:
        """``[0, 1]``, ``0`` or ``"0, 1"`` -> ``"0,1"``, the string Ultralytics parses; ``"cpu"`` stays."""
        if value is None or value == "cpu":
            return value
        items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str | int) else None
        if items is None:
            raise ValueError(f"{value!r}: expected cpu, a GPU index or a list of them ([0, 1] or '0,1')")
        ids = []
        for item in items:
            text = str(item).strip()
            if isinstance(item, bool) or not text.isdigit():
                raise ValueError(f"{value!r}: expected cpu, a GPU index or a list of them ([0, 1] or '0,1')")
            ids.append(int(text))
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"{value!r}: expected distinct GPU indices")
        return ",".join(map(str, ids))

    @model_validator(mode="after")
    def _line_candidates(self) -> DetectorConfig:
        if self.min_conf > self.conf:
            raise ValueError(f"min_conf {self.min_conf} is above conf {self.conf}")
        if self.min_candidates > self.max_det:
            raise ValueError(f"min_candidates {self.min_candidates} is above max_det {self.max_det}")
        return self


class GeometryConfig(StrictModel):
    """The geometric augmentation both classifiers share (``industrial_qc.classifier.geometry``)."""

    rotate90: float = Field(ge=0, le=1)
    flip: float = Field(ge=0, le=1)
    affine: float = Field(ge=0, le=1)
    scale: tuple[float, float]
    translate: float = Field(ge=0, lt=0.5)
    rotate: float = Field(ge=0, le=180)


class AugmentConfig(GeometryConfig):
    """Albumentations for the crop classifier (all probabilities in [0, 1])."""

    noise: float = Field(ge=0, le=1)
    brightness_contrast: float = Field(ge=0, le=1)
    hsv: float = Field(ge=0, le=1)
    # polarity flip (each crop mirrored around its mean colour: a dark line becomes a bright one) with this
    # probability, for the crops of the classes in invert_classes only. "auto": the classes whose training
    # defects go both ways, at least invert_min_share of them bright and at least as many dark
    invert: float = Field(ge=0, le=1)
    invert_classes: Literal["auto"] | list[str]
    invert_min_share: float = Field(gt=0, le=0.5)


class ClassifierConfig(StrictModel):
    """Stage 2: torchvision ResNet on padded square crops; class 0 is ``background`` (a detector false alarm)."""

    arch: Literal["resnet18", "resnet34", "resnet50"]
    weights: str | None  # null | imagenet (local torchvision cache only) | a local state_dict or checkpoint
    stem: Literal["standard", "no_maxpool"]
    crop_size: int = Field(ge=16)
    normalize: Literal["per_crop", "imagenet"]  # see industrial_qc.crops.to_tensor_batch
    context: float = Field(ge=0, le=3)  # padding each side, as a fraction of the box's longer side
    min_crop: float = Field(gt=0, le=1)  # smallest crop side, as a fraction of the image's shorter side
    background_per_defect: float = Field(ge=0)  # random defect-free windows per ground-truth crop
    hard_negatives: bool
    hard_negatives_per_image: int = Field(ge=0)
    # detections matching a defect (IoU >= 0.5) also train stage 2, labelled with its class: crops framed the way
    # the line frames them, and more defect examples
    proposals_per_defect: int = Field(ge=0)
    workers: int = Field(ge=0)
    # The line's copy of stage 2: int8 (static, per-channel, calibrated on training crops; faster on CPU) unless
    # it disagrees with fp32 on the val candidates, then fp32. classifier.onnx stays fp32.
    line_precision: Literal["int8", "fp32"]
    augment: AugmentConfig
    train: TrainConfig

    @model_validator(mode="after")
    def _even_crop(self) -> ClassifierConfig:
        if self.crop_size % 2:
            raise ValueError(f"crop_size must be even, got {self.crop_size}")
        return self


class PartAugmentConfig(GeometryConfig):
    """Albumentations for the part classifier (whole parts; all probabilities in [0, 1])."""

    brightness_contrast: float = Field(ge=0, le=1)
    noise: float = Field(ge=0, le=1)


class PartConfig(StrictModel):
    """Image-level data (a folder per class or a CSV manifest): one torchvision ResNet judges the whole part."""

    good_labels: list[str] = Field(min_length=1)  # the good class: the first of these present (case-insensitive)
    split_fractions: tuple[float, float, float]  # train, val, test for images without a split
    arch: Literal["resnet18", "resnet34", "resnet50"]
    weights: str | None  # None: from scratch | "imagenet" (local torchvision cache only) | a local state_dict
    image_size: int = Field(ge=32)  # px, square; the whole part is resized with its aspect kept (padded)
    normalize: Literal["imagenet", "per_image"]
    line_precision: Literal["int8", "fp32"]
    # staged unfreezing when started from weights and train.stages is null: head_epochs of the head (fc) alone at
    # train.lr, then every layer for the rest of train.epochs at train.lr * unfreeze_lr_scale
    head_epochs: int = Field(ge=1)
    unfreeze_lr_scale: float = Field(gt=0, le=1)
    workers: int = Field(ge=0)  # data-loader processes
    augment: PartAugmentConfig
    train: TrainConfig

    @model_validator(mode="after")
    def _fractions(self) -> PartConfig:
        tr, va, te = self.split_fractions
        if tr <= 0 or va <= 0 or te < 0 or abs(tr + va + te - 1) > 1e-6:
            raise ValueError(f"split_fractions {list(self.split_fractions)}: train and val > 0, test >= 0, sum 1")
        if not all(g.strip() for g in self.good_labels):
            raise ValueError("good_labels: empty class name")
        return self


class VerdictConfig(StrictModel):
    """How thresholds are chosen on the validation split (see ``industrial_qc.verdict``)."""

    target_recall: float = Field(gt=0, le=1)  # part-level defect recall (not PASS)
    # Confidence that the review threshold keeps target_recall: it may pass only as many defective reference parts
    # as keep the one-sided upper bound of the miss rate within 1 - target_recall (0 = the point estimate; see
    # ``industrial_qc.verdict.review_threshold``).
    recall_confidence: float = Field(ge=0, lt=1)
    max_false_reject: float = Field(ge=0, le=1)  # share of good val parts allowed to FAIL
    min_review_threshold: float = Field(gt=0, lt=1)
    max_review_threshold: float = Field(gt=0, lt=1)
    min_fail_threshold: float = Field(gt=0, lt=1)
    # The fail threshold is read from the good val parts plus the defect-free regions of the defective val parts
    # (their highest defect probability away from every labelled defect), not from the good parts alone.
    fail_from_defect_free_regions: bool
    # What the thresholds apply to: "both" = sqrt(classifier defect probability x detector confidence) per
    # candidate, "classifier" = the classifier's probability alone. See ``industrial_qc.verdict``.
    score: Literal["both", "classifier"]
    # The parts the thresholds are read from: "val" = val alone; "train+val" adds the train split (scored by the
    # trained models) when the val parts agree with it (train parts score a little high: more escapes).
    reference: Literal["train+val", "val"]
    match_iou: float = Field(gt=0, le=1)  # a reported defect matches a ground-truth box


class InputConfig(StrictModel):
    """What the line and batch scoring accept as a part image (``industrial_qc.images.ImageLimits``)."""

    max_pixels: int = Field(ge=1)  # checked on the header, before decoding
    min_side: int = Field(ge=1)


class LineConfig(StrictModel):
    """``qc inspect``'s plant connections (``industrial_qc.plant``); its command-line options win over these."""

    publish: list[str] = Field(default_factory=list)  # mqtt://, opc.tcp://, http(s):// URLs (--publish)
    deadline_ms: float | None = Field(default=None, ge=0)  # fail-safe: REVIEW when not judged in time; None = off
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus /metrics and /healthz; None = off
    metrics_host: str = "127.0.0.1"  # loopback unless a scraper elsewhere needs it
    status_interval: float = Field(default=5.0, gt=0)  # seconds between MQTT <topic>/status messages
    publish_drain: float = Field(default=10.0, ge=0)  # seconds to wait at exit for pending deliveries


class QCConfig(StrictModel):
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    threads: int | None  # torch threads; None = all available cores
    max_minutes: float | None = Field(gt=0)  # whole training (both stages); --max-minutes
    detector_share: float = Field(gt=0, lt=1)  # of the budget, for stage 1
    detector: DetectorConfig
    classifier: ClassifierConfig
    part: PartConfig  # image-level data: `qc train` on a class-folder tree or a CSV manifest
    verdict: VerdictConfig
    input: InputConfig
    line: LineConfig = Field(default_factory=LineConfig)  # qc inspect (older run.json snapshots have none)


def load_qc_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> QCConfig:
    """Config from ``path`` (default: configs/industrial_qc/default.yaml) with ``--set`` overrides applied."""
    return load_config(QCConfig, path, overrides, default_path=DEFAULT_CONFIG)
