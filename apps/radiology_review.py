"""Radiologist dashboard: ``vsuite app med RUN --results results.csv [--db URL] [--export-root DIR]
[--data-root DIR]``.

Worklist by priority (positive and REVIEW first, then by probability) with review status -> study view
(axial / coronal / sagittal slices with sliders, window/level presets, original vs N4-corrected, bias field,
Grad-CAM overlay with opacity, label, calibrated probabilities, QA record) -> sign-off saved to the review
store; the run's operating point (does its evidence support the target sensitivity; sensitivity, specificity and
REVIEW share per threshold); audit view; sign-offs as CSV. Volumes with SimpleITK, no torch. Login, allowed
folders and escaping: ``apps.login``, ``apps.roots``, ``apps.ui.md``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import streamlit as st

from apps import med_data, safe_export
from apps.login import audit_login, require_login
from apps.med_viewer import viewer
from apps.ui import (
    Sources,
    audited_download,
    get_store,
    item_picker,
    load_results_or_stop,
    load_run,
    md,
    mtime,
    page_args,
    show_refusal,
    sources_sidebar,
    store_label,
    verdict_badge,
)
from common.errors import InputError
from common.store import Store

APP = "med"


@st.cache_resource(show_spinner=False, max_entries=4)  # shared, never mutated
def _load_studies(path: str, stamp: float, run: dict | None) -> list[dict]:
    return med_data.load_studies(path, run)


@st.cache_resource(show_spinner=False, max_entries=2)
def _model_metadata(path: str, stamp: float) -> dict:
    from common.inference import OnnxModel

    return OnnxModel(path, threads=1).metadata


def load_model(run_dir: Path | None) -> tuple[dict, str | None]:
    """model.onnx metadata (threshold, temperature, labels), or why there is none (the app works without it)."""
    if run_dir is None or not run_dir.is_dir():
        return {}, None
    path = run_dir / "model.onnx"
    if not path.is_file():
        return {}, f"{run_dir}: run has no model.onnx; showing the scores stored in the results"
    try:
        return _model_metadata(str(path), mtime(path)), None
    except InputError as exc:
        return {}, str(exc)


def run_modality(run: dict | None, model_md: dict) -> str | None:
    """mri | ct from the model metadata or the run's config snapshot (a row's QA field overrides it)."""
    for src in (model_md, (run or {}).get("config") or {}):
        for key in ("preprocess", "preprocessing"):
            sec = src.get(key)
            if isinstance(sec, dict) and sec.get("modality"):
                return str(sec["modality"]).lower()
        if src.get("modality"):
            return str(src["modality"]).lower()
    return None


# ------------------------------------------------------------------------------------------------ worklist
def worklist_tab(ctx: dict, wl: pd.DataFrame) -> None:
    flash = st.session_state.pop("med_flash", None)
    if flash:
        st.success(flash)
    n_rev = int((wl["status"] == "reviewed").sum())
    st.caption(f"{len(wl)} studies · {n_rev} reviewed · {len(wl) - n_rev} to review")
    event = st.dataframe(wl.drop(columns=["item"]), hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="med_table", height=230, column_config={"p_positive": st.column_config.ProgressColumn(
                             f"p({ctx['pos'] or 'positive'})", min_value=0.0, max_value=1.0, format="%.2f")})
    items = wl["item"].tolist()
    if not items:
        st.info("No study matches the filters.")
        return
    names = dict(zip(wl["item"], wl["verdict"] + "  " + wl["study"] + "  (" + wl["status"] + ")", strict=False))
    study = item_picker("med", "med_study", "Study", items, event, wl["item"].tolist(), names)
    study_view(ctx, ctx["by_item"][study], items)


# ------------------------------------------------------------------------------------------------ study view
def study_view(ctx: dict, s: dict, items: list[str]) -> None:
    head, probs_col = st.columns([2, 3])
    with head:
        st.subheader(md(s["study"]))
        verdict_badge(s["verdict"])
        st.markdown(f"predicted **{md(s['label'] or '-')}**"
                    + (f" · p({md(ctx['pos'])}) **{s['p_positive']:.3f}**" if s["p_positive"] is not None
                       else ""))
        meta = ctx["model_md"]
        if meta:
            st.caption(" · ".join(f"{k} {md(_num(meta[k]))}" for k in ("threshold", "review_low", "review_high",
                                                                       "review_band", "temperature")
                                  if meta.get(k) is not None))
        st.caption(md(s["source"]))
    with probs_col:
        if s["probabilities"]:
            st.dataframe(pd.DataFrame({"label": list(s["probabilities"]), "probability": list(
                s["probabilities"].values())}), hide_index=True, column_config={
                "probability": st.column_config.ProgressColumn("calibrated probability", min_value=0.0,
                                                               max_value=1.0, format="%.3f")})
        with st.expander("QA record", expanded=False):
            st.json(s["qa"] or {})
    if s["status"] != "ok":
        st.error(md(f"{s['study']}: scoring failed: {s['reason'] or 'unknown error'}"))
        return
    viewer(ctx, s)  # apps.med_viewer
    signoff_form(ctx, s, items)
    store: Store | None = ctx["store"]
    if store is not None:
        hist = store.history(app=APP, run_id=ctx["run_id"], item=s["item"])
        with st.expander(f"Sign-off history of this study ({len(hist)})"):
            if hist:
                st.dataframe(pd.DataFrame(hist)[["id", "created_at", "reviewer", "decision", "finding", "note",
                                                 "latest"]], hide_index=True)
            else:
                st.caption("not signed off yet")


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def signoff_form(ctx: dict, s: dict, items: list[str]) -> None:
    labels = ctx["labels"] or sorted(s["probabilities"]) or ([s["label"]] if s["label"] else [])
    key = f"med_{s['index']}"
    with st.form(f"{key}_form"):
        st.markdown("**Sign-off** · Tab moves between fields, Ctrl+Enter signs off")
        c1, c2 = st.columns(2)
        decision = c1.radio("Model result", ["agree", "disagree"], horizontal=True, key=f"{key}_decision")
        others = [lbl for lbl in labels if lbl != s["label"]]
        truth = c2.selectbox("Correct label (if disagree)", others or labels or ["-"], key=f"{key}_truth")
        finding = st.text_input("Finding", key=f"{key}_finding", placeholder="e.g. 4 mm enhancing lesion, left")
        note = st.text_area("Note", key=f"{key}_note", height=70)
        if ctx["identity"] is not None:  # logged in: the login is the reviewer, not a field
            st.caption(f"Signing as **{md(ctx['identity'].name)}**")
            reviewer = ctx["identity"].name
        else:
            reviewer = st.text_input("Reviewer name", value=st.session_state.get("med_last_reviewer", ""),
                                     key=f"{key}_reviewer", placeholder="required")
        advance = st.checkbox("Go to the next study after signing", value=True, key=f"{key}_adv")
        submitted = st.form_submit_button("Sign off", type="primary", shortcut="Ctrl+Enter")
    if not submitted:
        return
    store: Store | None = ctx["store"]
    if store is None:
        st.error("cannot sign off: the review database is not available (see the message above)")
        return
    if not reviewer.strip():
        st.error("enter the reviewer name before signing off")
        return
    details = {"predicted_label": s["label"], "truth_label": s["label"] if decision == "agree" else truth,
               "verdict": s["verdict"], "p_positive": s["p_positive"], "probabilities": s["probabilities"]}
    try:
        rid = store.record_decision(app=APP, run_id=ctx["run_id"], item=s["item"], reviewer=reviewer.strip(),
                                    decision=decision, finding=finding.strip() or None, note=note,
                                    details=details, record=s["raw"])
    except Exception as exc:
        st.error(md(f"sign-off not saved: {type(exc).__name__}: {exc}"))
        return
    st.session_state["med_last_reviewer"] = reviewer.strip()
    st.session_state["med_flash"] = f"Signed off #{rid}: {md(s['study'])} → {decision}"
    if advance and len(items) > 1:
        i = items.index(s["item"]) if s["item"] in items else 0
        st.session_state["med_study_next"] = items[(i + 1) % len(items)]
    st.rerun()


# ------------------------------------------------------------------------------------------------ operating point
def operating_tab(ctx: dict) -> None:
    """The run's operating point: whether its evidence supports the target sensitivity, and the trade-off of
    sensitivity, specificity and REVIEW share per threshold (from run.json: training evidence, each eval split)."""
    views = med_data.tradeoff_views(ctx["run"])
    if not views:
        st.caption("this run carries no trade-off report (trained before it existed, or not a binary run); "
                   "`vsuite med eval RUN MANIFEST` adds one for a split")
        return
    names = [v["name"] for v in views]
    name = st.radio("Evidence", names, horizontal=True, key="med_tradeoff_source") if len(names) > 1 else names[0]
    view = views[names.index(name)]
    point = view["point"]
    if point and isinstance(point.get("message"), str):
        (st.success if point.get("supported") else st.warning)(md(point["message"]))
        if isinstance(point.get("review"), int | float) and isinstance(point.get("errors"), int):
            held = (f"{point['errors_in_review']:.0%} of its {point['errors']} errors"
                    if point["errors"] and isinstance(point.get("errors_in_review"), int | float) else "no error")
            st.caption(f"REVIEW band {_num(point.get('review_low'))}-{_num(point.get('review_high'))}: "
                       f"{point['review']:.0%} of the evidence, holding {held}")
    st.caption(f"{md(name)}: {len(view['rows'])} thresholds; the dashed line is the run's threshold"
               + (f" {view['threshold']:.3f}" if view["threshold"] is not None else ""))
    st.vega_lite_chart(med_data.tradeoff_chart_spec(view["rows"], view["threshold"]), width="stretch")
    pct = {c: st.column_config.NumberColumn(c, format="percent") for c in med_data.TRADEOFF_MEASURES.values()}
    st.dataframe(med_data.tradeoff_table(view["rows"]), hide_index=True, key="med_tradeoff_table",
                 column_config={"threshold": st.column_config.NumberColumn(format="%.3f"), **pct})


# ------------------------------------------------------------------------------------------------ audit, export
def audit_tab(ctx: dict) -> None:
    store: Store | None = ctx["store"]
    if store is None:
        st.caption("no review database")
        return
    hist = store.history(app=APP, run_id=ctx["run_id"])
    st.subheader(f"Every sign-off ({len(hist)})")
    if hist:
        df = pd.DataFrame(hist)
        df["study"] = df["item"].map(lambda it: ctx["by_item"][it]["study"] if it in ctx["by_item"] else it)
        df["truth_label"] = df["details"].map(lambda d: (d or {}).get("truth_label"))
        st.dataframe(df[["id", "created_at", "reviewer", "study", "decision", "truth_label", "finding", "note",
                         "latest"]], hide_index=True, key="med_audit_table")
    else:
        st.caption("no sign-off yet")
    with st.expander("Audit log (sign-offs and exports)"):
        log = store.audit(app=APP, run_id=ctx["run_id"], limit=500)
        if log:
            st.dataframe(pd.DataFrame(log), hide_index=True)


def _actor(ctx: dict) -> str:
    ident = ctx["identity"]
    return ident.name if ident is not None else (st.session_state.get("med_last_reviewer") or "unknown")


def export_tab(ctx: dict) -> None:
    store: Store | None = ctx["store"]
    if store is None:
        st.caption("no review database")
        return
    latest_only = st.checkbox("Only the latest sign-off per study", value=False, key="med_export_latest")
    audited_download("Download sign-offs (CSV)", store, app=APP, run_id=ctx["run_id"], actor=_actor(ctx),
                     file_name="signoffs.csv", key="med_download_csv", latest_only=latest_only)
    st.caption(f"Written under {md(ctx['roots'].export or '-')} (the export root, fixed at launch). A file the "
               "suite did not write is never overwritten; its own previous export is replaced only when you tick "
               "the box.")
    with st.form("med_export"):
        name = st.text_input("File (under the export root)", value="signoffs.csv", key="med_export_path")
        replace = st.checkbox("Replace the previous export", value=False, key="med_export_replace")
        go = st.form_submit_button("Write CSV")
    if go:
        write_csv(ctx, store, name, latest_only, replace)


def write_csv(ctx: dict, store: Store, name: str, latest_only: bool, replace: bool) -> None:
    actor = _actor(ctx)
    try:
        target = ctx["roots"].export_target(name, suffix=".csv")
        text = store.export_csv(app=APP, run_id=ctx["run_id"], latest_only=latest_only)
        mode = safe_export.write_file(target, text.encode("utf-8"), kind="csv", replace=replace,
                                      meta={"app": APP, "run_id": ctx["run_id"], "actor": actor})
    except safe_export.ExportRefused as exc:
        show_refusal(exc)
        return
    except (InputError, OSError) as exc:
        st.error(md(f"cannot write {name}: {exc}"))
        return
    rows = sum(1 for _ in csv.DictReader(io.StringIO(text)))
    store.log(actor=actor, action="export.csv", app=APP, run_id=ctx["run_id"],
              detail={"path": str(target), "rows": rows, "latest_only": latest_only, "replaced": mode == "replace"})
    st.success(f"Wrote {rows} sign-offs to {md(target)}" + (", replacing the previous export"
                                                           if mode == "replace" else ""))


# ------------------------------------------------------------------------------------------------ page
def main() -> None:
    st.set_page_config(page_title="Radiology review", layout="wide")
    st.title("Radiology review")
    identity = require_login(APP)  # stops the page until someone is logged in, where a login is needed
    args, arg_err = page_args()
    if arg_err:
        st.error(md(arg_err))
    src: Sources = sources_sidebar(args, APP)
    run, run_err = load_run(src.run_dir, "medical3d")
    if run_err:
        st.error(md(run_err))
    model_md, model_err = load_model(src.run_dir) if run is not None else ({}, None)
    if model_err:
        st.error(md(model_err))
    studies = load_results_or_stop(src.results, lambda: _load_studies(str(src.results), mtime(src.results), run),
                                   "vsuite app med RUN --results results.csv")
    store, store_err = get_store(src)
    if store_err:
        st.error(md(store_err))
    audit_login(store, APP)
    run_id = (run or {}).get("run_id") or next((s["run_id"] for s in studies if s["run_id"]), None) or "unknown"
    labels = list((run or {}).get("labels") or model_md.get("labels") or [])
    pos = med_data.positive_label(run, labels)
    latest = store.latest_decisions(app=APP, run_id=run_id) if store is not None else {}
    wl = med_data.worklist(studies, latest)
    sb = st.sidebar
    sb.header("Worklist")
    status = sb.radio("Status", ["all", "not reviewed", "reviewed"], horizontal=True, key="med_f_status")
    present = list(dict.fromkeys(wl["verdict"]))
    verdicts = sb.multiselect("Verdict", present, default=present, key="med_f_verdict")
    view = wl[wl["verdict"].isin(verdicts)] if verdicts else wl
    if status != "all":
        view = view[view["status"] == status]
    modality = run_modality(run, model_md)
    ctx = {"run": run, "run_id": run_id, "studies": studies, "by_item": {s["item"]: s for s in studies},
           "labels": labels, "pos": pos, "store": store, "model_md": model_md,
           "modality": modality, "results_dir": src.results.resolve().parent,
           "run_dir": src.run_dir if run is not None else None, "roots": src.roots, "identity": identity}
    st.caption(f"run {md(run_id)} · {len(studies)} studies from {md(src.results)} · sign-offs in "
               f"{md(store_label(store))}")
    tabs = st.tabs(["Worklist", "Operating point", "Audit", "Export"])
    with tabs[0]:
        worklist_tab(ctx, view.reset_index(drop=True))
    with tabs[1]:
        operating_tab(ctx)
    with tabs[2]:
        audit_tab(ctx)
    with tabs[3]:
        export_tab(ctx)


if __name__ == "__main__":
    main()
