"""Training augmentation of the medical3d vertical: acquisition variety on preprocessed (1, D, H, W) volumes.

Volumes reach the network in array order (z, y, x) on the grid ``preprocess.resample.spacing`` (x y z, mm), which
may be anisotropic. Geometry is therefore drawn in physical space: a rotation R (and scale) of the anatomy about
the volume centre becomes the voxel map S^-1 R S, S = diag(spacing), so a marker lands at the physical point R
predicts instead of being sheared by a voxel-space rotation. Intensity transforms mimic scanners and protocols:
bias field, gamma, gain/offset, blur, noise, thick slices along one axis, and (off by default) the polarity of
the finding. MONAI transforms where MONAI has them; seeded through ``Compose.set_random_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from monai.transforms import Affine, RandomizableTransform, Transform
from monai.utils import convert_data_type, convert_to_dst_type

from medical3d.config import AugmentConfig
from medical3d.preprocess import foreground_mask


def axis_rotation(axis: int, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about array axis ``axis`` (0 = z, 1 = y, 2 = x) in (z, y, x) coords."""
    a, b = [i for i in range(3) if i != axis]
    rot = np.eye(3)
    c, s = np.cos(angle), np.sin(angle)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def voxel_matrix(forward: np.ndarray, spacing_zyx: Sequence[float], translate_vox: Sequence[float] = (0, 0, 0)
                 ) -> np.ndarray:
    """(4, 4) matrix for ``monai.transforms.Affine`` that moves the anatomy by the physical map ``forward``
    ((3, 3), mm -> mm, (z, y, x) order, about the volume centre) and then by ``translate_vox`` voxels.

    MONAI samples output(p) = input(M p) in voxel coordinates centred on the volume, so M = S^-1 forward^-1 S with
    the translation undone first."""
    s = np.diag(np.asarray(spacing_zyx, dtype=np.float64))
    m3 = np.linalg.inv(s) @ np.linalg.inv(forward) @ s
    out = np.eye(4)
    out[:3, :3] = m3
    out[:3, 3] = -m3 @ np.asarray(translate_vox, dtype=np.float64)
    return out


class PhysicalAffine(Transform):
    """Move the anatomy of a (1, D, H, W) volume by a physical map (see ``voxel_matrix``); border padding."""

    def __init__(self, spacing_zyx: Sequence[float], mode: str = "bilinear") -> None:
        self.spacing_zyx = tuple(float(s) for s in spacing_zyx)
        self.mode = mode

    def __call__(self, img, forward: np.ndarray, translate_vox: Sequence[float] = (0, 0, 0)):  # type: ignore[override]
        matrix = voxel_matrix(forward, self.spacing_zyx, translate_vox)
        return Affine(affine=matrix, mode=self.mode, padding_mode="border", image_only=True)(img)


class RandPhysicalAffine(RandomizableTransform):
    """Random rotation (+-``rotate_deg`` about each axis), per-axis scale (1 +- ``scale``) in physical space and a
    translation of +-``translate_vox`` voxels per axis. The last draw is kept in ``forward``/``translate``."""

    def __init__(self, prob: float, rotate_deg: float, scale: float, translate_vox: float,
                 spacing_zyx: Sequence[float]) -> None:
        RandomizableTransform.__init__(self, prob)
        self.rotate = float(np.radians(rotate_deg))
        self.scale, self.translate_vox = float(scale), float(translate_vox)
        self.apply = PhysicalAffine(spacing_zyx)
        self.forward, self.translate = np.eye(3), np.zeros(3)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        angles = self.R.uniform(-self.rotate, self.rotate, 3)
        rotation = axis_rotation(0, angles[0]) @ axis_rotation(1, angles[1]) @ axis_rotation(2, angles[2])
        self.forward = rotation @ np.diag(1.0 + self.R.uniform(-self.scale, self.scale, 3))
        self.translate = self.R.uniform(-self.translate_vox, self.translate_vox, 3)

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        return self.apply(img, self.forward, self.translate)


def thick_slice_matrix(n: int, factor: int, phase: int) -> np.ndarray:
    """(n, n) matrix T with out = x @ T along one axis: the mean of blocks of ``factor`` voxels (the first block
    ``phase`` voxels shorter), linearly interpolated back from the block centres, constant past the end ones."""
    group = (np.arange(n) + phase) // factor
    groups = np.unique(group)
    average = (group[:, None] == groups[None, :]).astype(np.float64)
    average /= average.sum(axis=0, keepdims=True)  # (n, G): column g averages block g
    centres = np.arange(n) @ average
    identity = np.eye(len(groups))
    back = np.stack([np.interp(np.arange(n), centres, identity[g]) for g in range(len(groups))])  # (G, n)
    return average @ back


class RandThickSlices(RandomizableTransform):
    """A thick-slice acquisition along one random axis: blocks of k = 2..``max_factor`` voxels averaged and
    interpolated back onto the grid. Each block value sits at its block's centre, so structures keep their place."""

    def __init__(self, prob: float, max_factor: int) -> None:
        RandomizableTransform.__init__(self, prob)
        self.max_factor = int(max_factor)
        self.axis, self.factor, self.phase = 0, 1, 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.axis = int(self.R.randint(3))
            self.factor = int(self.R.randint(2, self.max_factor + 1))
            self.phase = int(self.R.randint(self.factor))

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        arr = convert_data_type(img, np.ndarray)[0]
        ax = self.axis + 1  # channel first
        t = thick_slice_matrix(arr.shape[ax], self.factor, self.phase).astype(np.float32)
        out = np.moveaxis(np.moveaxis(arr, ax, -1) @ t, -1, ax).astype(arr.dtype, copy=False)
        return convert_to_dst_type(out, img)[0]


def invert_foreground(arr: np.ndarray) -> np.ndarray:
    """(1, D, H, W) with the intensities inside the body mirrored about their median: a finding brighter than the
    tissue turns darker by as much, and vice versa; the background and the body's own level are unchanged.
    The body is preprocessing's Otsu foreground with its holes filled (a dark finding is inside the body)."""
    mask_img = sitk.BinaryFillhole(foreground_mask(sitk.GetImageFromArray(np.ascontiguousarray(arr[0]))))
    mask = sitk.GetArrayViewFromImage(mask_img).astype(bool)
    if not mask.any():
        return arr
    vol = arr[0]
    out = arr.copy()
    out[0][mask] = np.clip(2 * np.median(vol[mask]) - vol[mask], vol.min(), vol.max())
    return out


class RandPolarity(RandomizableTransform):
    """``invert_foreground`` with probability ``prob``: findings that can be brighter or darker than tissue."""

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return img
        arr = convert_data_type(img, np.ndarray, dtype=np.float32)[0]
        return convert_to_dst_type(invert_foreground(arr), img)[0]


def intensity_transforms(cfg: AugmentConfig) -> list:
    """The acquisition-like transforms in the order a scanner would produce them (tissue, then coil and
    protocol, then resolution, then gain and noise)."""
    from monai.transforms import (
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    sigma = tuple(cfg.blur_sigma)
    return [
        RandPolarity(prob=cfg.polarity_prob),
        RandBiasField(prob=cfg.bias_field_prob, coeff_range=(0.0, cfg.bias_field_coeff)),
        RandAdjustContrast(prob=cfg.contrast_prob, gamma=(1.0 - cfg.contrast_gamma, 1.0 + cfg.contrast_gamma)),
        RandThickSlices(prob=cfg.thick_slice_prob, max_factor=cfg.thick_slice_max_factor),
        RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=cfg.blur_prob),
        RandScaleIntensity(factors=cfg.intensity_scale, prob=cfg.intensity_prob),
        RandShiftIntensity(offsets=cfg.intensity_shift, prob=cfg.intensity_prob),
        RandGaussianNoise(prob=cfg.noise_prob, std=cfg.noise_std),
    ]


def build_augment(cfg: AugmentConfig, seed: int, spacing_xyz: Sequence[float] | None = None) -> Callable | None:
    """Seeded MONAI pipeline for (1, D, H, W) = (1, z, y, x) volumes, or None when augmentation is off.

    ``spacing_xyz``: mm of the preprocessed grid (``cfg.preprocess.resample.spacing``); None = isotropic. Flips and
    the physical affine first, then ``intensity_transforms``. Same seed, same sequence of draws."""
    if not cfg.enabled:
        return None
    from monai.transforms import Compose, RandFlip

    spacing_zyx = tuple(reversed(tuple(spacing_xyz))) if spacing_xyz is not None else (1.0, 1.0, 1.0)
    transforms = [RandFlip(prob=cfg.flip_prob, spatial_axis=axis) for axis in (0, 1, 2)]
    transforms.append(RandPhysicalAffine(cfg.affine_prob, cfg.rotate_deg, cfg.scale, cfg.translate_vox, spacing_zyx))
    compose = Compose(transforms + intensity_transforms(cfg))
    compose.set_random_state(seed=seed)
    return compose

