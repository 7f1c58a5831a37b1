"""The app in a real browser: Playwright drives Debian's Chromium (never a downloaded browser).

Skipped when /usr/bin/chromium is missing, unless REGCORE_REQUIRE_BROWSER=1 (CI sets it), in
which case a missing browser is a failure. Set REGCORE_SCREENSHOT=docs/screenshot.png to also
save the screenshot there.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_app import ROOT, SOURCE, TARGET, free_port, start_app, stop_app

from regcore import load_image
from regcore.metrics import local_ncc

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("REGCORE_REQUIRE_BROWSER") == "1"


def _browser_or_skip():
    missing = "/usr/bin/chromium is missing (apt-get install chromium)" if not CHROMIUM.exists() else None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing, sync_playwright = "the playwright Python package is missing", None
    if missing:
        if REQUIRED:
            pytest.fail(f"REGCORE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def browser_page():
    sync_playwright = _browser_or_skip()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_PORT", None)
    proc, url = start_app(["--port", str(free_port())], env)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            # The page must not need the network: record (and refuse) any request that leaves this machine.
            outside: list[str] = []

            def route(r):
                host = urlparse(r.request.url).hostname
                if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()

            pg.route("**/*", route)
            pg.goto(url)
            yield pg, outside
            browser.close()
    finally:
        stop_app(proc)


def test_upload_register_and_see_the_results(browser_page, tmp_path):
    from playwright.sync_api import expect

    page, outside = browser_page
    page.wait_for_selector("#register-btn", timeout=60_000)
    page.locator("#source input[type=file]").set_input_files(str(SOURCE))
    page.locator("#target input[type=file]").set_input_files(str(TARGET))
    page.locator("#source img").first.wait_for(timeout=30_000)
    page.locator("#target img").first.wait_for(timeout=30_000)
    page.click("#register-btn")

    # The warped image, the scores and the quiver plot appear.
    expect(page.locator("#warped img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#scores")).to_contain_text("local NCC", timeout=60_000)
    expect(page.locator("#summary")).to_contain_text("local NCC")
    page.locator("#quiver .js-plotly-plot").wait_for(timeout=60_000)
    arrows = page.locator("#quiver .scatterlayer .trace")
    assert arrows.count() >= 2  # the arrow lines and the hoverable arrow bases
    page.locator("#jacobian .js-plotly-plot").wait_for(timeout=60_000)
    expect(page.locator("#jacobian")).to_contain_text("folding")
    expect(page.locator("#files")).to_contain_text("flow.npy")
    src = page.locator("#warped img").first.get_attribute("src")
    assert src and ".png" in src

    page.wait_for_timeout(500)  # let plotly finish drawing before the picture is taken
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("REGCORE_SCREENSHOT"):
        target = ROOT / os.environ["REGCORE_SCREENSHOT"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
    assert outside == [], f"the page tried to reach the network: {outside[:3]}"


def test_one_click_example_registers(browser_page):
    from playwright.sync_api import expect

    page, _ = browser_page
    pair = [ROOT / "examples" / f"astronaut_gamma_{role}.png" for role in ("source", "target")]
    before = local_ncc(*(load_image(p) for p in pair))  # the summary shows "local NCC <before> → <after>"
    page.get_by_text("astronaut, contrast changed", exact=True).click()
    expect(page.locator("#source img").first).to_have_attribute("src", re.compile("astronaut_gamma_source"), timeout=30_000)
    expect(page.locator("#summary")).to_contain_text(f"local NCC {before:.3f} →", timeout=120_000)


def _open_medical(page) -> None:
    if not page.locator("#source-scan").is_visible():
        page.get_by_role("button", name=re.compile("^Medical scans")).click()
    page.locator("#source-scan").wait_for(timeout=30_000)


def _upload(page, elem_id: str, path: Path) -> None:
    """Put ``path`` in a file input, clearing the file an earlier test left there."""
    clear = page.locator(f"#{elem_id} button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def test_nifti_and_dicom_uploads_with_label_maps_show_dice(browser_page, tmp_path):
    """A NIfTI source, a DICOM target (the same phantom pair) and NIfTI label maps: previews, then Dice and outlines."""
    import SimpleITK as sitk
    from playwright.sync_api import expect

    page, outside = browser_page
    example = {role: ROOT / "examples" / f"phantom_{role}.nii.gz" for role in ("source", "target", "source_labels", "target_labels")}
    dicom = tmp_path / "target.dcm"
    sitk.WriteImage(sitk.ReadImage(str(example["target"])), str(dicom))
    _open_medical(page)
    for elem_id, path in (("source-scan", example["source"]), ("target-scan", dicom)):
        _upload(page, elem_id, path)
    for elem_id, path in (("source-labels", example["source_labels"]), ("target-labels", example["target_labels"])):
        _upload(page, elem_id, path)
    # Each scan's slice is previewed in its image box; a 2-D scan needs no slice selector.
    expect(page.locator("#source img").first).to_have_attribute("src", re.compile("source_slice"), timeout=30_000)
    expect(page.locator("#target img").first).to_have_attribute("src", re.compile("target_slice"), timeout=30_000)
    expect(page.locator("#slice-index")).to_be_hidden()
    expect(page.locator("#target-labels")).to_contain_text("phantom_target_labels", timeout=30_000)
    page.click("#register-btn")

    expect(page.locator("#dice")).to_contain_text("label 4", timeout=120_000)
    expect(page.locator("#summary")).to_contain_text("Dice")
    expect(page.locator("#summary")).to_contain_text("mm")
    before, after = map(float, re.search(r"mean\s+([\d.]+)\s+([\d.]+)", page.locator("#dice").inner_text()).groups())
    assert after > before + 0.05, (before, after)
    expect(page.locator("#contours img").first).to_be_visible(timeout=30_000)
    expect(page.locator("#files")).to_contain_text("warped_labels")
    assert outside == [], f"the page tried to reach the network: {outside[:3]}"


def test_a_volume_shows_the_slice_selector(browser_page):
    from playwright.sync_api import expect

    page, _ = browser_page
    _open_medical(page)
    for role in ("source", "target"):
        _upload(page, f"{role}-scan", ROOT / "examples" / f"phantom3d_{role}.nii.gz")
        _upload(page, f"{role}-labels", ROOT / "examples" / f"phantom3d_{role}_labels.nii.gz")
    expect(page.locator("#slice-index")).to_be_visible(timeout=30_000)
    expect(page.locator("#slice-index input[type=number]")).to_have_value("6", timeout=30_000)  # the middle of 12 slices
    page.locator("#slice-axis").get_by_text("y", exact=True).click()  # a y slice: 12 rows of 128
    expect(page.locator("#slice-index input[type=number]")).to_have_value("64", timeout=30_000)
    page.click("#register-btn")
    expect(page.locator("#summary")).to_contain_text("slice y=64 of 0..127", timeout=120_000)


@pytest.mark.parametrize("required", [True, False])
def test_missing_browser_skips_or_fails(monkeypatch, required):
    """Without a browser: a skip locally, a failure when REGCORE_REQUIRE_BROWSER=1 (as in CI)."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setattr(sys.modules[__name__], "REQUIRED", required)
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception, match="chromium is missing"):
        _browser_or_skip()
