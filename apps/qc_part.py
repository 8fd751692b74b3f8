"""The QC review page's views of a part-classifier run (run.json ``mode: part``), and the decision saving both
kinds of run share.

A part record has no boxes: the page shows the part beside its heatmap (the record's ``heatmap`` PNG, or computed
now with the run's own ``industrial_qc.part_pipeline.PartPipeline`` when the record has none), the class
probabilities and the verdict; the operator confirms or corrects the part's class and verdict. No torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from apps import qc_data
from apps.qc_draw import read_image
from apps.qc_part_export import export_class_folders
from apps.roots import Roots
from apps.safe_export import ExportRefused
from apps.ui import md, mtime, show_refusal
from common.errors import InputError
from common.store import Store
from industrial_qc.part_pipeline import PartPipeline, line_model_path

APP = "qc"
AUTO_CLASS = "auto (from class)"


@st.cache_resource(show_spinner=False, max_entries=2)
def _part_pipeline(run_dir: str, stamp: float) -> PartPipeline:
    return PartPipeline.from_run(Path(run_dir), threads=1)  # one thread: a page shares the machine


def load_part_model(run_dir: Path, run: dict) -> tuple[PartPipeline | None, str | None]:
    """The run's part classifier (the line's model) to draw heatmaps the records lack, or why it is not available
    (the page works without it: the records' heatmaps and probabilities)."""
    try:
        path = Roots.from_launch(run_dir, None).readable(line_model_path(run_dir, run))
        return _part_pipeline(str(run_dir), mtime(path) + mtime(run_dir / "run.json")), None
    except InputError as exc:
        return None, f"{exc}; showing the heatmaps and probabilities stored in the results"


def part_labels(run: dict | None, parts: list[dict]) -> tuple[list[str], str | None]:
    """The run's classes and its good class (runs without them: what the records' probabilities name)."""
    labels = list((run or {}).get("labels") or [])
    for p in parts:
        labels += [k for k in p["probabilities"] if k not in labels]
    return labels, (run or {}).get("good_label")


# ------------------------------------------------------------------------------------------------ part view
def heatmap_of(ctx: dict, part: dict, img: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """RGB heatmap of the part and where it came from: the record's PNG, else computed with the run's model."""
    note = ""
    if part["heatmap"]:
        try:
            path = ctx["roots"].readable(qc_data.resolve_file(str(part["heatmap"]), ctx["results_dir"]))
            return cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB), "heatmap written with the record"
        except InputError as exc:
            note = f"{exc}; "
    pipe: PartPipeline | None = ctx.get("part_pipe")
    if img is None or pipe is None:
        return None, note + "no heatmap (none in the record and the run's model is not available)"
    try:
        shown = part["class"] if part["class"] in pipe.labels else None
        return cv2.cvtColor(pipe.heatmap(img, class_name=shown), cv2.COLOR_BGR2RGB), note + "computed now with " \
            f"{pipe.classifier.model.path.name}"
    except Exception as exc:  # a model that does not fit the image must not take the page down
        return None, note + f"heatmap failed: {type(exc).__name__}: {exc}"


def part_body(ctx: dict, part: dict, img: np.ndarray | None) -> None:
    """The part and its heatmap side by side, then the class probabilities."""
    left, right = st.columns(2)
    if img is not None:
        left.image(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), caption="part", width="stretch")
    heat, source = heatmap_of(ctx, part, img)
    if heat is not None:
        right.image(heat, caption=f"{part['class']}: where the classifier looked", width="stretch")
    right.caption(md(source))
    probabilities_panel(part, ctx.get("good_label"))


def probabilities_panel(part: dict, good_label: str | None) -> None:
    probs = part["probabilities"]
    cls = f"**{md(part['class'])}** {part['class_prob']:.2f}" if part["class"] is not None and \
        part["class_prob"] is not None else "-"
    st.markdown(f"Top defect class {cls} · defect score {part['max_defect_score']:.2f} "
                f"(1 - P({md(good_label or 'good')}))")
    if not probs:
        st.caption("no class probabilities in this record")
        return
    rows = sorted(((str(k), float(v) if v is not None else float("nan")) for k, v in probs.items()),
                  key=lambda t: -t[1])
    st.dataframe(pd.DataFrame(rows, columns=["class", "probability"]), hide_index=True,
                 key=f"qc_probs_{part['index']}", column_config={"probability": st.column_config.ProgressColumn(
                     "probability", min_value=0.0, max_value=1.0, format="%.3f")})


# ------------------------------------------------------------------------------------------------ decisions
def part_decision_form(ctx: dict, part: dict, items: list[str]) -> None:
    """Confirm or correct the part's class; the verdict follows it (the good class passes) unless set by hand."""
    labels: list[str] = ctx["labels"]
    good = ctx.get("good_label")
    idx = part["index"]
    model_class = good if part["verdict"] == "PASS" and good in labels else part["class"]
    options = labels if model_class in labels or model_class is None else [*labels, str(model_class)]
    with st.form(f"qc_form_{idx}", border=True):
        st.markdown("**Decision** · Tab moves between fields, Ctrl+Enter saves")
        label = st.selectbox("Class of this part", options, key=f"qc_cls_{idx}",
                             index=options.index(model_class) if model_class in options else 0)
        verdict = st.radio("Part verdict", [AUTO_CLASS, "PASS", "FAIL"], horizontal=True, key=f"qc_verdict_{idx}")
        note = st.text_input("Note", key=f"qc_note_{idx}")
        advance = st.checkbox("Go to the next part after saving", value=True, key=f"qc_adv_{idx}")
        submitted = st.form_submit_button("Save decision", type="primary", shortcut="Ctrl+Enter")
    if not submitted:
        return
    final = ("PASS" if label == good else "FAIL") if verdict == AUTO_CLASS else verdict
    details = {"model_verdict": part["verdict"], "verdict_mode": "auto" if verdict == AUTO_CLASS else "manual",
               "model_class": model_class, "label": label, "defects": []}
    save_decision(ctx, part, items, final, note, details, advance)


def save_decision(ctx: dict, part: dict, items: list[str], final: str, note: str, details: dict,
                  advance: bool) -> None:
    """File the decision in the review store (with the record it is about), then show it and move on."""
    store: Store | None = ctx["store"]
    if store is None:
        st.error("cannot save: the review database is not available (see the message above)")
        return
    if not ctx["reviewer"]:
        st.error("enter your name in the sidebar (Reviewer name) before saving")
        return
    try:
        rid = store.record_decision(app=APP, run_id=ctx["run_id"], item=part["item"], reviewer=ctx["reviewer"],
                                    decision=final, note=note, details=details, record=part["raw"])
    except Exception as exc:
        st.error(md(f"decision not saved: {type(exc).__name__}: {exc}"))
        return
    st.session_state["qc_flash"] = f"Saved review #{rid}: {md(Path(part['file']).name)} → {final}"
    if advance and len(items) > 1:
        i = items.index(part["item"]) if part["item"] in items else 0
        st.session_state["qc_part_next"] = items[(i + 1) % len(items)]
    st.rerun()


def run_export(ctx: dict, name: str, write) -> tuple[Store, str, object] | None:
    """``write(target, latest, meta)`` into ``name`` under the export root; refusals and failures are shown, not
    raised. Returns (store, actor, what ``write`` returned), or None when nothing was written."""
    store: Store | None = ctx["store"]
    if store is None:
        st.error("no review database: nothing to export")
        return None
    actor = ctx["reviewer"] or "unknown"
    try:
        target = ctx["roots"].export_target(name)
        latest = store.latest_decisions(app=APP, run_id=ctx["run_id"])
        res = write(target, latest, {"app": APP, "run_id": ctx["run_id"], "actor": actor})
    except ExportRefused as exc:
        show_refusal(exc)
        return None
    except (InputError, OSError) as exc:
        st.error(md(f"export failed: {exc}"))
        return None
    return store, actor, res


def export_folders(ctx: dict, name: str, replace: bool) -> None:
    """Reviewed parts into one folder per reviewed class under the export root (``apps.qc_part_export``)."""
    done = run_export(ctx, name, lambda target, latest, meta: export_class_folders(
        ctx["parts"], latest, target, ctx["results_dir"], replace=replace, roots=ctx["roots"], meta=meta))
    if done is None:
        return
    store, actor, res = done
    store.log(actor=actor, action="export.class_folders", app=APP, run_id=ctx["run_id"],
              detail={"out": str(res.out_dir), "images": res.images, "classes": res.classes, "replaced": res.replaced})
    counts = ", ".join(f"{md(k)} {v}" for k, v in sorted(res.classes.items())) or "none"
    st.success(f"Exported {res.images} images to {md(res.out_dir)} ({counts}); `vsuite qc train` takes the folder"
               + (", replacing the previous export" if res.replaced else ""))
    for s in res.skipped:
        st.warning(md(s))
