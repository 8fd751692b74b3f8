"""The image-level generator (industrial_qc.synth_parts): seeded, every split holds every class, both layouts."""

from __future__ import annotations

from industrial_qc.synth import SynthConfig
from industrial_qc.synth_parts import synthesize_parts


def test_the_generator_is_seeded_and_gives_every_split_every_class(tmp_path):
    cfg = SynthConfig(images=60, size=48, seed=4, image_format="png")
    a = synthesize_parts(tmp_path / "a", cfg, "folders")
    b = synthesize_parts(tmp_path / "b", cfg, "folders")
    assert a.counts == b.counts and all(all(n > 0 for n in c.values()) for c in a.counts.values())
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert (tmp_path / "a" / files[0]).read_bytes() == (tmp_path / "b" / files[0]).read_bytes()


def test_csv_layout_writes_a_manifest_relative_to_itself(tmp_path):
    cfg = SynthConfig(images=20, size=32, seed=1, image_format="jpg")
    rep = synthesize_parts(tmp_path / "c", cfg, "csv", splits=False)
    rows = rep.data.read_text().splitlines()
    assert rep.data.name == "labels.csv" and rows[0] == "path,label" and len(rows) == 21
    assert all((tmp_path / "c" / r.split(",")[0]).is_file() for r in rows[1:])
    assert list(rep.counts) == ["all"] and sum(rep.counts["all"].values()) == 20
