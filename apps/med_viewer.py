"""The radiology viewer: axial / coronal / sagittal slices with sliders, window/level presets, original vs
N4-corrected vs bias field vs the network input, and the Grad-CAM overlay with its opacity (streamlit side of
``apps.med_view``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import streamlit as st

from apps import med_data, med_view
from apps.ui import md, mtime
from common.errors import InputError

VIEWS = ("Original", "N4-corrected", "Bias field", "Preprocessed")


@st.cache_resource(show_spinner=False, max_entries=8)
def _volume(path: str, stamp: float) -> med_view.Volume:
    return med_view.load_volume(Path(path))


@st.cache_resource(show_spinner=False, max_entries=8)
def _raw_image(path: str, stamp: float):
    return med_view.read_volume(Path(path))


def volume(path: Path) -> med_view.Volume:
    return _volume(str(path), mtime(path))


def _artifact(ctx: dict, s: dict, name: str) -> Path | None:
    """The study's ``name`` volume when there is one inside the folders the app may read (else None, said)."""
    path = med_data.find_artifact(s, name, ctx["results_dir"], ctx["run_dir"])
    if path is None:
        return None
    try:
        return ctx["roots"].readable(path)
    except InputError as exc:
        st.warning(md(exc))
        return None


def viewer(ctx: dict, s: dict) -> None:
    """Three planes of the chosen view with sliders, window/level and the Grad-CAM overlay."""
    key = f"med_{s['index']}"
    c1, c2, c3, c4 = st.columns([3, 2, 1, 2], vertical_alignment="bottom")
    view = c1.radio("View", VIEWS, horizontal=True, key=f"{key}_view")
    modality = s["modality"] or ctx["modality"]
    presets = med_view.presets_for(modality if view in ("Original", "N4-corrected") else None)
    preset = c2.selectbox("Window / level", presets, key=f"{key}_wl_{view}")
    show_cam = c3.toggle("Grad-CAM", value=True, key=f"{key}_cam")
    alpha = c4.slider("Grad-CAM opacity", 0.0, 1.0, 0.4, 0.05, key=f"{key}_alpha", disabled=not show_cam)
    rdir = ctx["results_dir"]
    try:
        original = volume(ctx["roots"].readable(med_data.resolve_path(s["source"], rdir)))
    except InputError as exc:
        st.error(md(exc))
        return
    base, colormap = original, None
    bias_path = _artifact(ctx, s, "bias_field")
    bias_img = None
    if view in ("N4-corrected", "Bias field"):
        if modality == "ct":
            st.info("CT: no N4 bias correction; showing the original")
        elif bias_path is not None:
            try:
                bias_img = _raw_image(str(bias_path), mtime(bias_path))
            except InputError as exc:
                st.error(md(exc))
        else:
            bias_img = st.session_state.get(f"{key}_n4")
            if bias_img is None:
                st.info("The scorer wrote no bias field for this study.")
                if st.button("Compute N4 now", key=f"{key}_n4_btn"):
                    bias_img = compute_n4(ctx, original, key)
        if bias_img is not None:
            corrected, bias_arr = med_view.n4_corrected(original, bias_img)
            if view == "N4-corrected":
                base = corrected
            else:
                base = med_view.Volume(corrected.image, bias_arr)
                colormap = cv2.COLORMAP_VIRIDIS
    elif view == "Preprocessed":
        prep = _artifact(ctx, s, "preprocessed")
        if prep is None:
            st.info("The scorer wrote no preprocessed volume for this study; showing the original")
        else:
            try:
                base = volume(prep)
            except InputError as exc:
                st.error(md(exc))
    cam = None
    cam_path = _artifact(ctx, s, "gradcam")
    if show_cam and cam_path is not None:
        try:
            cam = med_view.resample_onto(_raw_image(str(cam_path), mtime(cam_path)), base.image)
        except InputError as exc:
            st.error(md(exc))
    elif show_cam:
        st.caption("no Grad-CAM map for this study")
    lo, hi = med_view.window_range(preset, base.array)
    if colormap is not None:
        lo, hi = float(base.array.min()), float(base.array.max()) + 1e-6
    centre = med_view.hottest_point(cam) if cam is not None and cam.max() > 0 else tuple(n // 2 for n in base.shape)
    cols = st.columns(3)
    for col, plane, c in zip(cols, med_view.PLANES, centre, strict=True):
        n = med_view.plane_size(base.array, plane)
        with col:
            idx = st.slider(plane, 0, max(n - 1, 1), min(int(c), n - 1), key=f"{key}_{plane}_{base.shape}")
            sl = med_view.plane_slice(base.array, plane, idx)
            ov = med_view.plane_slice(cam, plane, idx) if cam is not None else None
            st.image(med_view.render(sl, med_view.plane_spacing(base.spacing, plane), lo, hi, overlay=ov,
                                     alpha=alpha, colormap=colormap), caption=f"{plane} {idx + 1}/{n}",
                     width="stretch")
    st.caption(f"{view} · window [{lo:.1f}, {hi:.1f}] · display {med_view.DISPLAY_ORIENTATION}, "
               f"{'x'.join(str(v) for v in base.shape[::-1])} voxels, spacing "
               f"{'x'.join(f'{v:.2f}' for v in base.spacing)} mm")


def compute_n4(ctx: dict, original: med_view.Volume, key: str):
    """N4 on the displayed study with the run's N4 settings (model metadata) or the defaults; kept per session."""
    try:
        from common.config import config_section
        from medical3d.config import DEFAULT_CONFIG, N4Config
        from medical3d.preprocess import n4_correct
    except Exception as exc:
        st.error(md(f"N4 is not available here: {type(exc).__name__}: {exc}"))
        return None
    meta = ctx["model_md"]
    pre = meta.get("preprocess") or meta.get("preprocessing") or {}
    try:
        cfg = config_section(N4Config, DEFAULT_CONFIG, "preprocess.n4", **(pre.get("n4") or {}))
    except Exception:
        cfg = config_section(N4Config, DEFAULT_CONFIG, "preprocess.n4")
    try:
        with st.spinner("N4 bias correction..."):
            _, bias, _ = n4_correct(original.image, cfg)
    except (RuntimeError, ValueError) as exc:
        st.error(md(f"N4 failed on this study: {exc}"))
        return None
    st.session_state[f"{key}_n4"] = bias
    return bias
