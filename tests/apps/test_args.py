"""The arguments ``vsuite app`` hands a page after ``--``, and how the page reads them back."""

from __future__ import annotations

from pathlib import Path

from apps.args import app_argv, parse_app_args


def test_app_arguments_round_trip(tmp_path):
    argv = app_argv(tmp_path / "run", tmp_path / "r.jsonl", "postgresql+psycopg://u@h/db")
    args = parse_app_args(argv)
    assert args.run == (tmp_path / "run").resolve() and args.results == (tmp_path / "r.jsonl").resolve()
    assert args.db == "postgresql+psycopg://u@h/db"
    assert parse_app_args(app_argv("run", "r.csv", "my.sqlite")).db == str(Path.cwd() / "my.sqlite")
    args = parse_app_args(app_argv("run", "r.csv", None, tmp_path / "exports", [tmp_path / "a", tmp_path / "b"]))
    assert args.export_root == tmp_path / "exports" and args.data_roots == [tmp_path / "a", tmp_path / "b"]
    assert args.db is None
