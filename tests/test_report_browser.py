"""report.html in a real headless browser (Debian's chromium, driven by Playwright): it loads offline
with every figure, no missing resource and no console error."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import synthetic_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("CALIBTUNE_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="chromium is not installed")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_report_opens_in_headless_chromium_with_every_figure(tmp_path):
    from playwright.sync_api import sync_playwright

    run = tmp_path / "run"
    synthetic_run(run)
    for name in ("heatmap", "risk_coverage", "subjects_auroc", "reliability_probe", "reliability_lora_prompt",
                 "reliability_option_confidence"):
        assert (run / f"{name}.png").is_file() and (run / f"{name}.svg").is_file(), name
    errors: list[str] = []
    failed: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto((run / "report.html").as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])")
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        title = page.title()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert not errors, errors
    assert not failed, failed
    assert len(images) == 6 and all(done and width > 200 for _, done, width in images), images
    assert title == "calibtune report: browser <check>"
    for heading in ("Cross-model matrix", "Paper-style table", "Every method and cell", "Paired differences",
                    "Risk-coverage curves", "Reliability diagrams", "AUROC per subject", "Resolved config"):
        assert heading in headings, heading
    assert (tmp_path / "report.png").stat().st_size > 10_000
