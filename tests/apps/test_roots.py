"""The review apps read and write only under their launch-time roots (``apps.roots.Roots``)."""

from __future__ import annotations

import pytest

from apps.roots import Roots
from common.errors import InputError
from tests.apps.helpers import app_test, errors, export, make_qc_case, no_exception, qc_page


def test_paths_outside_the_allowed_roots_are_refused(tmp_path, app_argv):
    case = make_qc_case(tmp_path / "case")
    exports = tmp_path / "exports"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    roots = Roots.from_launch(case["run_dir"], case["results"], exports)
    for name in ("../elsewhere/x", str(outside / "x"), "..", ".", "", ".hidden"):
        with pytest.raises(InputError):
            roots.export_target(name)
    (exports / "sub").mkdir(parents=True)
    (exports / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="outside the export root"):
        roots.export_target("link/x")  # resolved, link followed, before the check
    assert roots.export_target("sub/x") == (exports / "sub" / "x").resolve()
    with pytest.raises(InputError, match="outside the folders this app may read"):
        roots.readable(outside / "a.png")
    link = case["results"].parent / "sneaky.png"
    link.symlink_to(outside / "a.png")
    with pytest.raises(InputError, match="outside the folders this app may read"):
        roots.readable(link)
    # in the page: an export name leading out is refused, nothing is created outside
    at = export(qc_page(case, app_argv, exports), "../elsewhere/yolo")
    assert any("outside the export root" in e for e in errors(at)) and list(outside.iterdir()) == []
    # images the results name outside the read roots (no --data-root): refused with the flag to add, not shown
    app_argv(case["run_dir"], "--results", case["results"])
    at = app_test("qc_review.py")
    at.selectbox(key="qc_part").set_value(str(case["images"] / "part_01.png")).run()
    no_exception(at)
    assert any("part_01.png: outside the folders this app may read" in e and "--data-root" in e for e in errors(at))
    assert len(at.image) == 0
