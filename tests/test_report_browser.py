"""The sweep's report.html, opened in a real headless Chromium: every image loads."""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield b
        b.close()


def test_report_renders_with_every_image_loaded(tiny_sweep, browser, tmp_path):
    out, _ = tiny_sweep
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto((out / "report.html").resolve().as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 4 + 2 * 2  # four figures, then each run's loss curve and best/worst images
    alts = page.evaluate("Array.from(document.images).map(i => i.alt)")
    assert any("learning curves" in a for a in alts) and sum("loss curve of" in a for a in alts) == 2
    assert sum("best and worst images of" in a for a in alts) == 2
    assert all(done and w > 100 and h > 100 for done, w, h in images), images
    assert not failed
    assert "Results" in page.inner_text("body") and page.locator("table tr").count() >= 4
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one


def test_the_report_shows_the_probe_section(browser, samples, tmp_path):
    """`featinv report SWEEP PROBE`: the probe folder's section renders, its figures load."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from featinv.cli import main

    probe = tmp_path / "probe"
    assert main(["-q", "probe", "--runs", "stage2", "--data", str(samples / "val"), "--out", str(probe),
                 "--probes", "views", "ablate", "--device", "cpu"]) == 0
    html_path = tmp_path / "report.html"
    assert main(["-q", "report", str(probe), "--out", str(html_path)]) == 0
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(html_path.resolve().as_uri())
    page.wait_for_load_state("load")
    section = page.locator("section#probes")
    assert section.count() == 1 and "What the features encode" in section.inner_text()
    assert [h.inner_text() for h in section.locator("h3").all()] == ["Feature views", "Ablation"]
    images = page.evaluate("Array.from(document.querySelectorAll('#probes img')).map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 3 and all(done and w > 300 for done, w in images), images
