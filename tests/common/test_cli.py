import subprocess
import sys
from pathlib import Path

VSUITE = str(Path(sys.executable).with_name("vsuite"))


def run(*args):
    return subprocess.run([VSUITE, *args], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin"})


def test_help_lists_command_groups():
    out = run("--help")
    assert out.returncode == 0
    for name in ("qc", "med", "app", "score", "demo"):
        assert f" {name} " in out.stdout


def test_version():
    out = run("--version")
    assert out.returncode == 0 and "vision-suite" in out.stdout


def test_each_command_help_has_an_example():
    for cmd in (["score"], ["demo"]):
        out = run(*cmd, "--help")
        assert out.returncode == 0 and "Example:" in out.stdout


def test_score_errors_are_one_clear_line(tmp_path):
    out = run("score", str(tmp_path / "nope"), "x.png", "--out", str(tmp_path / "s.csv"))
    assert out.returncode == 2
    assert "run directory not found" in out.stderr and "Traceback" not in out.stderr
    out = run("score", str(tmp_path), "x.png", "--out", str(tmp_path / "s.xlsx"))
    assert out.returncode == 2 and "must end in one of" in out.stderr
