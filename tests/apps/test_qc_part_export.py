"""Reviewed parts of a part run as class folders (apps.qc_part_export): what is copied where, and what is skipped
and why."""

from __future__ import annotations

import pytest

from apps import qc_data
from apps.qc_part_export import export_class_folders
from apps.roots import Roots
from apps.safe_export import ExportRefused


def _part(tmp_path, name: str, status: str = "ok") -> dict:
    path = tmp_path / "img" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"png")
    return qc_data.norm_record({"file": str(path), "status": status, "mode": "part", "verdict": "FAIL"}, 0)


def test_copies_each_reviewed_part_into_its_class_and_lists_the_rest(tmp_path):
    parts = [_part(tmp_path, n) for n in ("a.png", "b.png", "c.png", "d.png", "e.png")]
    (tmp_path / "img" / "d.png").unlink()
    latest = {parts[0]["item"]: {"details": {"label": "scratch"}}, parts[1]["item"]: {"details": {"label": "good"}},
              parts[2]["item"]: {"details": {"defects": []}}, parts[3]["item"]: {"details": {"label": "pit"}},
              parts[4]["item"]: {"details": {"label": "../evil"}}}
    res = export_class_folders(parts, latest, tmp_path / "out", roots=Roots.from_launch(None, None, None,
                                                                                        [tmp_path / "img"]))
    assert res.images == 2 and res.classes == {"scratch": 1, "good": 1}
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "good/00001_b.png", "scratch/00000_a.png"]
    assert [s.split(": ", 1)[1] for s in res.skipped] == [
        "the review names no class usable as a folder name", "image not found",
        "the review names no class usable as a folder name"]


def test_never_writes_into_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(ExportRefused, match="did not create"):
        export_class_folders([], {}, tmp_path / "out")
