"""Both apps in a real browser: ``vsuite app qc|med`` serves them on localhost, Debian's Chromium (driven by
Playwright, no browser download) walks the main flow, and screenshots land in ``test-output/apps/``."""

from __future__ import annotations

import os
import signal
import time

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from common.store import open_store
from tests.apps.helpers import REPO, make_med_case, make_qc_case, start_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHOTS = REPO / "test-output" / "apps"
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the streamlit server it started (own session)
        try:
            proc.wait(15)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _idle(page: Page) -> None:
    """Wait until streamlit finished the current script run and no stale element of the last run is left."""
    page.wait_for_timeout(200)
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app !== null && app.getAttribute('data-test-script-state') === 'notRunning'
                && document.querySelector('[data-stale="true"]') === null;
        }""", timeout=TIMEOUT_MS)


def _shot(page: Page, name: str) -> None:
    path = SHOTS / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000, f"{path} looks empty"


@pytest.fixture
def servers(tmp_path):
    qc = make_qc_case(tmp_path / "qc")
    med = make_med_case(tmp_path / "med")
    started = []
    try:
        for name, case in (("qc", qc), ("med", med)):
            proc, url = start_app(name, case["run_dir"], case["results"], None, tmp_path / f"{name}.log")
            started.append(proc)
            case["url"] = url
        yield qc, med
    finally:
        for proc in started:
            _stop(proc)
    for name in ("qc", "med"):  # the CLI printed where the app lives
        assert "Local URL: http://localhost:" in (tmp_path / f"{name}.log").read_text()


def test_main_flows_in_chromium(servers):
    qc, med = servers
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(TIMEOUT_MS)
            qc_flow(page, qc)
            med_flow(page, med)
        finally:
            browser.close()


def qc_flow(page: Page, case: dict) -> None:
    t0 = time.perf_counter()
    page.goto(case["url"])
    expect(page.get_by_role("heading", name="Factory QC review")).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    print(f"qc page rendered in {time.perf_counter() - t0:.1f} s")
    _idle(page)
    _shot(page, "qc_1_parts.png")
    page.get_by_label("Reviewer name").fill("ann")
    page.get_by_label("Reviewer name").press("Enter")
    _idle(page)
    # keyboard: J = next part (part_01, a FAIL with a scratch)
    page.get_by_role("heading", name="Factory QC review").click()
    page.keyboard.press("j")
    expect(page.get_by_text("part_01.png", exact=False).last).to_be_visible()
    expect(page.get_by_text("#0 scratch 0.97").first).to_be_visible()
    _idle(page)
    page.get_by_label("Note").fill("deep scratch, confirmed")
    page.get_by_role("button", name="Save decision").click()
    expect(page.get_by_text("Saved review #1: part_01.png → FAIL")).to_be_visible()
    _idle(page)
    page.get_by_text("Saved review #1").scroll_into_view_if_needed()
    _shot(page, "qc_2_saved.png")
    row = open_store(case["db"]).latest_decisions(app="qc")[str(case["images"] / "part_01.png")]
    assert (row["reviewer"], row["decision"], row["note"]) == ("ann", "FAIL", "deep scratch, confirmed")
    page.get_by_role("tab", name="KPIs").click()
    expect(page.get_by_text("FAIL rate per class over time")).to_be_visible()
    expect(page.get_by_text("Escape rate")).to_be_visible()
    _idle(page)
    _shot(page, "qc_3_kpis.png")


def med_flow(page: Page, case: dict) -> None:
    t0 = time.perf_counter()
    page.goto(case["url"])
    expect(page.get_by_role("heading", name="Radiology review")).to_be_visible()
    expect(page.get_by_test_id("stImage")).to_have_count(3)
    print(f"med page rendered in {time.perf_counter() - t0:.1f} s")
    _idle(page)
    _shot(page, "med_1_study.png")
    page.get_by_text("N4-corrected", exact=True).click()
    expect(page.get_by_text("N4-corrected · window", exact=False)).to_be_visible()
    expect(page.get_by_test_id("stImage")).to_have_count(3)
    _idle(page)
    _shot(page, "med_2_n4_gradcam.png")
    page.get_by_label("Finding").fill("6 mm lesion, right")
    page.get_by_label("Reviewer name").fill("Dr. Grey")
    page.get_by_role("button", name="Sign off").click()
    expect(page.get_by_text("Signed off #1: case_001 → agree")).to_be_visible()
    _idle(page)
    _shot(page, "med_3_signed.png")
    row = open_store(case["db"]).latest_decisions(app="med")[str(case["root"] / "studies" / "case_001.nii.gz")]
    assert (row["reviewer"], row["decision"], row["finding"]) == ("Dr. Grey", "agree", "6 mm lesion, right")
    page.get_by_role("tab", name="Audit").click()
    expect(page.get_by_text("Every sign-off (1)")).to_be_visible()
    _idle(page)
    _shot(page, "med_4_audit.png")
