"""Factory operator review app: ``vsuite app qc RUN --results results.jsonl [--db URL] [--export-root DIR]
[--data-root DIR]``.

Sidebar filters -> parts table -> part view (class-coloured boxes, crops with the classifier's probabilities,
verdict badge) -> decision form (confirm/reject and relabel each defect, part verdict) saved to the review store.
A part-classifier run's parts show their heatmap and class probabilities instead (``apps.qc_part``).
KPIs, measured escape / false-reject rates against reviewed truth, reviewed parts exported (YOLO; class folders
for part runs), audit.
No torch: images with OpenCV, the classifier with onnxruntime. Login, allowed folders and escaping: ``apps.login``,
``apps.roots``, ``apps.ui.md``.
"""

from __future__ import annotations

import html
from datetime import UTC, timedelta
from pathlib import Path

import pandas as pd
import streamlit as st

from apps import qc_data
from apps.login import audit_login, require_login
from apps.qc_draw import class_colour, draw_defects, hex_colour, part_crops, read_image
from apps.qc_part import (
    export_folders,
    load_part_model,
    part_body,
    part_decision_form,
    part_labels,
    run_export,
    save_decision,
)
from apps.roots import Roots
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
    reviewer_name,
    sources_sidebar,
    store_label,
    verdict_badge,
)
from common.errors import InputError
from common.store import Store
from industrial_qc.pipeline import OnnxClassifier, line_classifier_path
from industrial_qc.verdict import VERDICTS

APP = "qc"
AUTO = "auto (from defects)"


@st.cache_resource(show_spinner=False, max_entries=4)  # shared, never mutated: no per-run copy of big results
def _load_parts(path: str, stamp: float) -> list[dict]:
    return qc_data.load_parts(path)


@st.cache_resource(show_spinner=False, max_entries=2)
def _classifier(path: str, stamp: float) -> OnnxClassifier:
    return OnnxClassifier(Path(path), threads=1)  # the line's reader; one thread: a page shares the machine


def load_models(run_dir: Path | None, run: dict | None = None) -> tuple[OnnxClassifier | None, str | None]:
    """The classifier the line ran (run.json ``artifacts.line_classifier``, else ``classifier.onnx``) for the crop
    view, or why it is not available (the app works without it)."""
    if run_dir is None or not run_dir.is_dir():
        return None, None  # already reported with the run
    models = [run_dir / "detector.onnx", line_classifier_path(run_dir, run or {})]
    missing = [m.name for m in models if not m.is_file()]
    if missing:
        return None, (f"{run_dir}: run has no {' or '.join(missing)}; showing the probabilities stored in the "
                      "results (crop re-classification is off)")
    try:
        path = Roots.from_launch(run_dir, None).readable(models[1])  # run.json names a file in it
        return _classifier(str(path), mtime(path)), None
    except InputError as exc:
        return None, f"{exc}; showing the probabilities stored in the results"


def class_names(run: dict | None, parts: list[dict]) -> list[str]:
    """The defect classes: the detector's (detection runs) or every class but the good one (part runs)."""
    run = run or {}
    names = list(run.get("detector_names") or [n for n in run.get("labels", []) if n not in ("background",
                                                                                            run.get("good_label"))])
    for p in parts:
        for d in p["defects"]:
            if d["class"] not in names:
                names.append(d["class"])
    return names


# ------------------------------------------------------------------------------------------------ sidebar
def sidebar_filters(df: pd.DataFrame, names: list[str]) -> qc_data.Filters:
    sb = st.sidebar
    sb.header("Filters")
    present = [v for v in (*VERDICTS, "ERROR") if v in set(df["verdict"])]
    verdicts = sb.multiselect("Verdict", present, default=present, key="qc_f_verdict")
    classes = sb.multiselect("Defect class (any of)", names, key="qc_f_class", placeholder="all classes")
    lo, hi = sb.slider("Top defect probability", 0.0, 1.0, (0.0, 1.0), step=0.01, key="qc_f_prob")
    time_range = None
    times = df["time"].dropna()
    if len(times) and times.max() - times.min() >= pd.Timedelta(seconds=2):
        t0 = times.min().tz_convert(UTC).floor("s").to_pydatetime().replace(tzinfo=None)
        t1 = times.max().tz_convert(UTC).ceil("s").to_pydatetime().replace(tzinfo=None)
        span = (t1 - t0).total_seconds()
        step = timedelta(seconds=max(1, int(span // 500)))
        fmt = "MM-DD HH:mm" if span > 6 * 3600 else "HH:mm:ss"
        a, b = sb.slider("Time (UTC)", t0, t1, (t0, t1), step=step, format=fmt, key="qc_f_time")
        time_range = (pd.Timestamp(a, tz=UTC), pd.Timestamp(b, tz=UTC) + pd.Timedelta(seconds=1))
    reviewed = sb.radio("Review status", ["all", "not reviewed", "reviewed"], horizontal=True, key="qc_f_rev")
    return qc_data.Filters(verdicts=verdicts, classes=classes, prob_range=(lo, hi), time_range=time_range,
                           reviewed=reviewed)


# ------------------------------------------------------------------------------------------------ parts tab
def parts_tab(ctx: dict, view: pd.DataFrame) -> None:
    flash = st.session_state.pop("qc_flash", None)
    if flash:
        st.success(flash)
    st.caption(f"{len(view)} of {len(ctx['df'])} parts match the filters")
    shown = view[["name", "time", "verdict", "defects", "classes", "top_prob", "latency_ms", "reviewed", "reason"]]
    event = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row", key="qc_table",
                         height=240, column_config={"top_prob": st.column_config.ProgressColumn(
                             "top prob", min_value=0.0, max_value=1.0, format="%.2f")})
    items = view["item"].drop_duplicates().tolist()
    if not items:
        st.info("No part matches the filters.")
        return
    labels = dict(zip(view["item"], view["verdict"] + "  " + view["name"], strict=False))
    part = item_picker("qc", "qc_part", "Part", items, event, view["item"].tolist(), labels)
    part_view(ctx, part, items)


def part_view(ctx: dict, item: str, items: list[str]) -> None:
    part = ctx["by_item"][item]
    if part["mode"] == "part":  # a part classifier's record: heatmap and class probabilities, no boxes
        part_body(ctx, part, part_header(ctx, part))
        part_decision_form(ctx, part, items)
    else:
        detection_body(ctx, part)
        decision_form(ctx, part, items)
    store: Store | None = ctx["store"]
    if store is not None:
        hist = store.history(app=APP, run_id=ctx["run_id"], item=item)
        with st.expander(f"Review history of this part ({len(hist)})", expanded=False):
            if hist:
                st.dataframe(pd.DataFrame(hist)[["id", "created_at", "reviewer", "decision", "note", "latest"]],
                             hide_index=True)
            else:
                st.caption("not reviewed yet")


def part_header(ctx: dict, part: dict):
    """Verdict badge, file, time and scores of the part; its image (BGR) or None (an error says why)."""
    verdict_badge(part["verdict"])
    st.markdown(f"**{md(part['file'])}**  \n{md(part['timestamp'] or 'no timestamp')}"
                + (f" · {part['latency_ms']:.0f} ms" if isinstance(part["latency_ms"], int | float) else "")
                + f" · top defect score {part['max_defect_score']:.2f}"
                + f" (probability {part['max_defect_prob']:.2f})")
    if part["status"] != "ok":
        st.error(md(f"{part['file']}: the line could not inspect this part: {part['reason'] or 'unknown error'}"))
        return None
    try:
        return read_image(ctx["roots"].readable(qc_data.resolve_file(part["file"], ctx["results_dir"])))
    except InputError as exc:
        st.error(md(exc))
        return None


def detection_body(ctx: dict, part: dict) -> None:
    """The part with its class-coloured boxes beside the crops of its defects."""
    names: list[str] = ctx["names"]
    left, right = st.columns([3, 2])
    with left:
        img = part_header(ctx, part)
        if img is not None:
            st.image(draw_defects(img, part["defects"], names), width="stretch")
            st.markdown(legend_html(names), unsafe_allow_html=True)
    with right:
        crops_panel(ctx, part, img)


def legend_html(names: list[str]) -> str:
    """The class colour legend; class names come from data, so they are HTML-escaped (the colours are ours)."""
    return " ".join(f"<span style='color:{hex_colour(class_colour(n, names))}'>■ {html.escape(str(n))}</span>"
                    for n in names)


def crops_panel(ctx: dict, part: dict, img) -> None:
    defects = part["defects"]
    st.subheader(f"Defects ({len(defects)})")
    if not defects:
        st.caption("No defect reported on this part.")
        return
    probs = None
    crops: list = []
    if img is not None:
        try:
            crops, probs = part_crops(img, defects, ctx["clf"])
        except Exception as exc:  # a model that does not fit the image must not take the page down
            st.error(md(f"classifier on crops failed: {type(exc).__name__}: {exc}"))
            crops, probs = part_crops(img, defects, None)
    for i, d in enumerate(defects):
        c_img, c_txt = st.columns([1, 2])
        if i < len(crops):
            c_img.image(crops[i], width=112)
        det = f"detector {md(d['det_class'])} {d['det_conf']:.2f}" if d["det_conf"] is not None else "detector -"
        cls = f"classifier {md(d['cls_class'])} {d['cls_prob']:.2f}" if d["cls_prob"] is not None else "classifier -"
        name_p = d["class_prob"] if d["class_prob"] is not None else d["defect_prob"]
        level = f" · {md(d['level'].upper())} level" if d.get("level") else ""
        c_txt.markdown(f"**#{i} {md(d['class'])}** {name_p:.2f}  \n{cls} · {det} · defect p "
                       f"{d['defect_prob']:.2f} · score {d['defect_score']:.2f}{level}")
        if probs is not None and i < len(probs):
            labels = ctx["clf"].labels
            top = sorted(zip(labels, probs[i], strict=False), key=lambda t: -t[1])[:4]
            c_txt.caption("classifier: " + ", ".join(f"{md(n)} {p:.2f}" for n, p in top))


def decision_form(ctx: dict, part: dict, items: list[str]) -> None:
    names: list[str] = ctx["names"]
    idx = part["index"]
    with st.form(f"qc_form_{idx}", border=True):
        st.markdown("**Decision** · Tab moves between fields, Ctrl+Enter saves")
        actions = []
        for i, d in enumerate(part["defects"]):
            c1, c2 = st.columns([2, 2])
            act = c1.radio(f"#{i} {md(d['class'])} {d['defect_prob']:.2f}", ["confirm", "reject"],
                           horizontal=True, key=f"qc_act_{idx}_{i}")
            opts = names if d["class"] in names else [*names, d["class"]]
            lab = c2.selectbox(f"#{i} class", opts, index=opts.index(d["class"]), key=f"qc_lbl_{idx}_{i}")
            actions.append((d, act, lab))
        verdict = st.radio("Part verdict", [AUTO, "PASS", "FAIL"], horizontal=True, key=f"qc_verdict_{idx}")
        note = st.text_input("Note", key=f"qc_note_{idx}")
        advance = st.checkbox("Go to the next part after saving", value=True, key=f"qc_adv_{idx}")
        submitted = st.form_submit_button("Save decision", type="primary", shortcut="Ctrl+Enter")
    if not submitted:
        return
    confirmed = any(a == "confirm" for _, a, _ in actions)
    final = ("FAIL" if confirmed else "PASS") if verdict == AUTO else verdict
    details = {
        "model_verdict": part["verdict"],
        "verdict_mode": "auto" if verdict == AUTO else "manual",
        "defects": [{"index": i, "box": d["box"], "model_class": d["class"], "defect_prob": d["defect_prob"],
                     "action": a, "label": lab} for i, (d, a, lab) in enumerate(actions)],
    }
    save_decision(ctx, part, items, final, note, details, advance)


# ------------------------------------------------------------------------------------------------ other tabs
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def kpi_tab(df: pd.DataFrame) -> None:
    k = qc_data.kpis(df)
    c = st.columns(5)
    c[0].metric("Parts inspected", k["parts"])
    c[1].metric("FAIL rate", _pct(k["fail_rate"]))
    c[2].metric("REVIEW rate", _pct(k["review_rate"]))
    c[3].metric("Errors", k["errors"])
    c[4].metric("Reviewed", k["reviewed"])
    st.subheader("FAIL rate per class over time")
    rate = qc_data.fail_rate_by_class(df)
    if rate.empty:
        st.caption("no timestamps to chart")
    else:
        st.caption(f"share of the parts in each {qc_data.time_bin(df[df['time'].notna()])} bin that failed with "
                   "a defect of that class")
        st.line_chart(rate)
    st.subheader("Measured against reviewed truth")
    m = qc_data.measured_rates(df)
    if not m["reviewed"]:
        st.caption("no reviewed part yet: escape and false-reject rates appear once parts are reviewed")
        return
    c = st.columns(4)
    c[0].metric("Escape rate", _pct(m["escape_rate"]), help="reviewed-defective parts the model PASSed")
    c[1].metric("False-reject rate", _pct(m["false_reject_rate"]), help="reviewed-good parts the model FAILed")
    c[2].metric("Agreement", _pct(m["agreement"]))
    c[3].metric("Reviewed (defective / good)", f"{m['defective']} / {m['good']}")


def export_tab(ctx: dict) -> None:
    """Reviewed parts as a dataset (YOLO boxes; a part run's: class folders), and the reviews as CSV."""
    store: Store | None = ctx["store"]
    kind, default, export = ("class folders", "reviewed_parts", export_folders) if ctx["part_run"] else \
        ("a YOLO dataset", "reviewed_yolo", export_yolo)
    st.subheader(f"Reviewed parts as {kind}")
    st.caption(f"Written under {md(ctx['roots'].export or '-')} (the export root, fixed at launch). A folder the "
               "suite did not create is never changed; its own previous export is replaced only when you tick the box.")
    with st.form("qc_export"):
        name = st.text_input("Folder (under the export root)", value=default, key="qc_export_dir")
        replace = st.checkbox("Replace the previous export", value=False, key="qc_export_replace")
        go = st.form_submit_button("Export YOLO dataset" if not ctx["part_run"] else "Export class folders")
    if go:
        export(ctx, name, replace)
    if store is not None:
        audited_download("Download all reviews (CSV)", store, app=APP, run_id=ctx["run_id"],
                         actor=ctx["reviewer"], file_name="qc_reviews.csv", key="qc_download_csv")


def export_yolo(ctx: dict, name: str, replace: bool) -> None:
    done = run_export(ctx, name, lambda target, latest, meta: qc_data.export_yolo(
        ctx["parts"], latest, ctx["names"], target, ctx["results_dir"], replace=replace, roots=ctx["roots"],
        meta=meta))
    if done is None:
        return
    store, actor, res = done
    store.log(actor=actor, action="export.yolo", app=APP, run_id=ctx["run_id"],
              detail={"out": str(res.out_dir), "images": res.images, "boxes": res.boxes, "replaced": res.replaced})
    st.success(f"Exported {res.images} images ({res.boxes} boxes, {res.good} good parts) to {md(res.out_dir)} "
               f"(data.yaml, classes {md(', '.join(res.names))})" + (", replacing the previous export"
                                                                       if res.replaced else ""))
    for s in res.skipped:
        st.warning(md(s))


def audit_tab(ctx: dict) -> None:
    store: Store | None = ctx["store"]
    if store is None:
        st.caption("no review database")
        return
    hist = store.history(app=APP, run_id=ctx["run_id"])
    st.subheader(f"Every decision ({len(hist)})")
    if hist:
        st.dataframe(pd.DataFrame(hist)[["id", "created_at", "reviewer", "item", "decision", "note", "latest"]],
                     hide_index=True)
    log = store.audit(app=APP, run_id=ctx["run_id"], limit=500)
    st.subheader("Audit log")
    if log:
        st.dataframe(pd.DataFrame(log), hide_index=True)


# ------------------------------------------------------------------------------------------------ page
def main() -> None:
    st.set_page_config(page_title="QC review", layout="wide")
    st.title("Factory QC review")
    identity = require_login(APP)  # stops the page until someone is logged in, where a login is needed
    args, arg_err = page_args()
    if arg_err:
        st.error(md(arg_err))
    src: Sources = sources_sidebar(args, APP)
    reviewer = reviewer_name("qc_reviewer", identity)
    run, run_err = load_run(src.run_dir, "industrial_qc")
    if run_err:
        st.error(md(run_err))
    part_run = (run or {}).get("mode") == "part"
    clf, model_err = load_models(src.run_dir, run) if run is not None and not part_run else (None, None)
    part_pipe, part_err = load_part_model(src.run_dir, run) if part_run else (None, None)
    for err in (model_err, part_err):
        if err:
            st.error(md(err))
    parts = load_results_or_stop(src.results, lambda: _load_parts(str(src.results), mtime(src.results)),
                                 "vsuite app qc RUN --results results.jsonl")
    store, store_err = get_store(src)
    if store_err:
        st.error(md(store_err))
    audit_login(store, APP)
    run_id = (run or {}).get("run_id") or next((p["run_id"] for p in parts if p["run_id"]), None) or "unknown"
    other = sorted({str(p["run_id"]) for p in parts if p["run_id"] and p["run_id"] != run_id})
    if other:
        st.warning(md(f"some results come from other runs ({', '.join(other)}); reviews are filed under {run_id}"))
    names = class_names(run, parts)
    latest = store.latest_decisions(app=APP, run_id=run_id) if store is not None else {}
    df = qc_data.parts_frame(parts, latest)
    view = qc_data.filter_parts(df, sidebar_filters(df, names))
    by_item = {}
    for p in parts:
        by_item[p["item"]] = p  # a file inspected twice: the latest record
    labels, good_label = part_labels(run, parts)
    ctx = {"run": run, "run_id": run_id, "parts": parts, "by_item": by_item, "df": df, "names": names, "clf": clf,
           "store": store, "reviewer": reviewer, "results_dir": src.results.resolve().parent, "roots": src.roots,
           "part_pipe": part_pipe, "labels": labels, "good_label": good_label, "part_run": part_run}
    st.caption(f"run {md(run_id)} · {len(parts)} records from {md(src.results)} · reviews in "
               f"{md(store_label(store))}")
    tabs = st.tabs(["Parts", "KPIs", "Export", "Audit"])
    with tabs[0]:
        parts_tab(ctx, view)
    with tabs[1]:
        kpi_tab(df)
    with tabs[2]:
        export_tab(ctx)
    with tabs[3]:
        audit_tab(ctx)


if __name__ == "__main__":
    main()
