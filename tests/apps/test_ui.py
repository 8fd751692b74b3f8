"""Names from data are shown as text (``apps.ui.md``): no HTML or Markdown from a record reaches the page."""

from __future__ import annotations

import html
import json
import re
import shutil

from apps.ui import md
from tests.apps.helpers import app_test, make_qc_case, no_exception, plain

EVIL_HTML = "<img src=x onerror=alert(1)>"
EVIL_MD = "![x](http://evil.example/p.png)"


def test_names_from_data_are_shown_as_text(tmp_path, app_argv):
    assert plain(md("<b>x</b>")) == "<b>x</b>" and "<b>" not in md("<b>x</b>")
    assert "![" not in md(EVIL_MD) and "](" not in md(EVIL_MD)
    case = make_qc_case(tmp_path / "case")
    img = case["images"] / "evil.png"
    shutil.copy(case["images"] / "part_01.png", img)
    rec = {"file": str(img), "source": str(img), "status": "ok", "verdict": "FAIL", "run_id": case["run"]["run_id"],
           "timestamp": "2026-01-05T09:00:00+00:00", "width": 64, "height": 64, "reason": "**bold** <i>x</i>",
           "defects": [{"box": [10.0, 12.0, 30.0, 16.0], "det_class": n, "cls_class": n, "det_conf": 0.8,
                        "cls_prob": 0.9, "defect_prob": 0.9} for n in (EVIL_HTML, EVIL_MD)]}
    with case["results"].open("a") as f:
        f.write(json.dumps(rec) + "\n")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    at = app_test("qc_review.py")
    at.selectbox(key="qc_part").set_value(str(img)).run()
    no_exception(at)
    legend = next(m.value for m in at.markdown if "■" in m.value)  # the one place the page writes HTML
    assert html.escape(EVIL_HTML) in legend and EVIL_HTML not in legend
    rendered = [m.value for m in at.markdown if "■" not in m.value] + [c.value for c in at.caption] + \
        [r.label for r in at.radio]
    for text in rendered:
        assert not re.search(r"(?<!\\)<", text), text  # no raw HTML tag can open
        assert "![" not in text and "](" not in text, text  # no image or link syntax
    shown = [plain(t) for t in rendered]
    assert any(f"#0 {EVIL_HTML} 0.90" in t for t in shown) and any(f"#1 {EVIL_MD}" in t for t in shown)
