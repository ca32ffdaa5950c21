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
