"""``vsuite app``: the typer group, its help and the streamlit command it builds (the browser test runs it)."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from apps.cli import app, pick_port, streamlit_command


def test_help_lists_both_apps():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "qc" in res.output and "med" in res.output
    res = CliRunner().invoke(app, ["med", "--help"])
    assert res.exit_code == 0 and "--results" in res.output and "--db" in res.output and "--port" in res.output


def test_streamlit_command_passes_app_arguments_after_double_dash(tmp_path):
    cmd = streamlit_command("qc", tmp_path / "run", tmp_path / "results.jsonl", "sqlite:///x.db", 8600, "127.0.0.1")
    assert cmd[1:4] == ["-m", "apps.serve", "run"] and cmd[4].endswith("apps/qc_review.py")
    assert "--server.headless" in cmd and cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    tail = cmd[cmd.index("--") + 1:]
    assert tail == [str((tmp_path / "run").resolve()), "--results", str((tmp_path / "results.jsonl").resolve()),
                    "--db", "sqlite:///x.db"]


def test_busy_port_is_refused_and_skipped(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert pick_port(busy, "127.0.0.1") > busy
        res = CliRunner().invoke(app, ["qc", str(tmp_path), "--results", str(tmp_path / "r.jsonl"),
                                       "--port", str(busy)])
        assert res.exit_code == 2 and "in use" in res.output
