"""The report: ``snakemake --report report.html`` on a run of the sample archive, opened in headless
Chromium (Debian's ``chromium`` and ``chromium-driver``) the way a person would: each result category
clicked, each page opened, and every picture on it decoded."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO, snakemake
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cl_ml_tools.data import tables
from cl_ml_tools.steps import report as pages_step

pytestmark = pytest.mark.e2e

CATEGORIES = {
    "1. Archive": "results/report/overview.svg",
    "2. Gallery": "results/report/gallery.html",
    "3. People": "results/report/people.html",
    "4. Duplicates": "results/report/duplicates.html",
    "5. Errors": "results/report/errors.html",
    "6. Blurry": "results/report/blurry.html",
    "7. Badly exposed": "results/report/badly_exposed.html",
}
# Where the screenshots in docs/ come from: CL_ML_TOOLS_SCREENSHOTS=docs pytest tests/test_report.py
SCREENSHOTS = os.environ.get("CL_ML_TOOLS_SCREENSHOTS")


@pytest.fixture(scope="module")
def report(sample_run: Path) -> Path:
    snakemake(sample_run, "--report", "report.html")
    return sample_run


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


IMAGES = """
const images = Array.from(document.images);
return [images.length, images.filter(i => i.complete && i.naturalWidth > 0).length,
        images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)];
"""


WIDEST_SVG = """return Math.max(0, ...Array.from(document.querySelectorAll("img[src^='data:image/svg']"))
                                     .map(i => i.complete ? i.naturalWidth : 0))"""


def click_until(browser, xpath: str, shown, what: str):
    """Click the element at ``xpath`` until ``shown(browser)`` holds: the report is a React app, and a click
    that lands while it re-renders does nothing (seen once on a loaded CI machine), or lands on a menu entry
    still sliding into place over it (ElementClickInterceptedException, twice in one CI run)."""
    for _ in range(5):
        try:
            WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.XPATH, xpath))
            browser.find_element(By.XPATH, xpath).click()
            return WebDriverWait(browser, 5).until(shown)
        except (TimeoutException, StaleElementReferenceException, ElementClickInterceptedException):
            time.sleep(0.5)
    raise AssertionError(f"clicking {xpath} never showed {what}")


def open_result(browser, report: Path, category: str) -> None:
    """Back to the report's start, the category in the menu, then the eye button of its one result."""
    browser.switch_to.default_content()
    browser.get((report / "report.html").as_uri())
    name = CATEGORIES[category]
    listed = f"//*[text()='{name}']"
    click_until(browser, f"//*[text()='{category}']", lambda d: d.find_elements(By.XPATH, listed), name)
    if name.endswith(".svg"):  # shown as an <img>; the report's own logo is a 58-px SVG image too
        shown = lambda d: d.execute_script(WIDEST_SVG) > 600  # noqa: E731
    else:
        shown = lambda d: d.find_elements(By.TAG_NAME, "iframe")  # noqa: E731
    click_until(browser, f"{listed}/following::a[1]", shown, f"the content of {name}")


def page_images(browser) -> tuple[int, int, list[str]]:
    """Images of the result shown in the report's iframe: total, decoded, and the alt texts of broken ones."""
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return tuple(browser.execute_script(IMAGES))


def screenshot(browser, name: str) -> None:
    if SCREENSHOTS:
        browser.switch_to.default_content()
        browser.save_screenshot(str(REPO / SCREENSHOTS / name))


def test_report_lists_every_category(report: Path, browser) -> None:
    browser.get((report / "report.html").as_uri())
    WebDriverWait(browser, 20).until(lambda d: "RESULTS" in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    for category in CATEGORIES:
        assert category in text


def test_overview_plot_renders(report: Path, browser) -> None:
    open_result(browser, report, "1. Archive")
    assert browser.execute_script(WIDEST_SVG) > 600
    screenshot(browser, "report-overview.png")


def test_gallery_shows_a_decoded_thumbnail_of_every_photo_and_video(report: Path, browser) -> None:
    files = tables.load("files", report / "results")
    thumbs = tables.load("thumbnails", report / "results")
    media = files[(files.status == "ok") & files.kind.isin(["image", "video"])]
    with_thumb = set(thumbs[(thumbs.status == "ok") & (thumbs.role == "thumb")].media_id)
    open_result(browser, report, "2. Gallery")
    total, decoded, broken = page_images(browser)
    assert broken == []
    assert total == decoded == len(set(media.media_id) & with_thumb) >= 8
    # Files without a thumbnail (the truncated JPEG) are named, not shown as broken pictures.
    assert "misc/truncated.jpg" in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, "report-gallery.png")


def test_people_page_has_a_row_of_crops_per_person(report: Path, browser) -> None:
    people = tables.load("people", report / "results")
    assert len(people) >= 2  # the astronaut (three files) and Grace Hopper (two)
    open_result(browser, report, "3. People")
    total, decoded, broken = page_images(browser)
    assert broken == [] and total == decoded == sum(min(12, n) for n in people["size"])
    rows = browser.find_elements(By.CSS_SELECTOR, ".row")
    assert len(rows) == len(people)
    assert rows[0].text.startswith(f"Person {people.person_id.iloc[0]}")
    screenshot(browser, "report-people.png")


def test_duplicates_are_side_by_side(report: Path, browser) -> None:
    duplicates = tables.load("duplicates", report / "results")
    open_result(browser, report, "4. Duplicates")
    total, decoded, broken = page_images(browser)
    assert broken == [] and total == decoded == len(duplicates) >= 2
    assert "astronaut copy.jpg" in browser.find_element(By.TAG_NAME, "body").text


def test_errors_are_listed_with_their_messages(report: Path, browser) -> None:
    errors = sum(
        int((tables.load(step, report / "results").status == "error").sum())
        for step in tables.TABLES
        if step not in ("people", "events", "hls")
    )
    open_result(browser, report, "5. Errors")
    page_images(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr")
    assert len(rows) == errors + 1 and errors > 0
    assert "truncated" in browser.find_element(By.TAG_NAME, "body").text


def test_blurry_and_badly_exposed_pages_list_what_the_quality_table_flags(report: Path, browser) -> None:
    """The sample's black video frames are blurry and dark but the colour bars after them are not, so no file
    is blurry; Tesseract's white test page is 90 % clipped white: the one badly exposed file."""
    open_result(browser, report, "6. Blurry")
    page_images(browser)
    assert "No file is blurry" in browser.find_element(By.TAG_NAME, "body").text
    open_result(browser, report, "7. Badly exposed")
    total, decoded, broken = page_images(browser)
    assert broken == [] and total == decoded == 1
    caption = browser.find_element(By.TAG_NAME, "figcaption").text
    assert caption.startswith("texts/phototest.tif · bright (mean luma 0.9") and caption.endswith("% white")


def test_report_command_works_in_the_environment_make_run_builds(sample_run: Path, tmp_path: Path) -> None:
    """The README's report command after `make run`: a virtual environment built by tools/bootstrap.sh
    without the test tools (as `make run` builds .venv) has what `snakemake --report` needs (pygments)."""
    import subprocess

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")} | {"VENV": str(venv)}
    subprocess.run([str(REPO / "tools" / "bootstrap.sh")], env=env, check=True, capture_output=True, timeout=900)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import pytest"], capture_output=True, check=False)
    assert probe.returncode != 0, "the environment holds the test tools: it is not the one `make run` builds"
    out = tmp_path / "report.html"
    proc = subprocess.run(
        [str(venv / "bin" / "snakemake"), "-s", str(REPO / "Snakefile"), "--report", str(out)],
        cwd=sample_run, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 100_000 and "cl_ml_tools" in out.read_text(errors="replace")


def test_the_pages_read_only_their_columns_and_equal_the_pages_of_whole_tables(
    sample_run: Path, tmp_path: Path
) -> None:
    """The report job loads only what the pages show (no embedding: at a million files those are
    gigabytes); pages made that way are byte for byte those made from every column."""
    results = sample_run / "results"
    steps = sorted(p.name.removesuffix(".parquet") for p in (results / "tables").iterdir())
    assert {"dino", "clip", "face_embeddings"} <= set(steps)
    settings = pages_step.Settings.from_config({})
    pages = {}
    for label, columns in (("whole", lambda step: None), ("read", pages_step.columns)):
        loaded = {step: tables.load(step, results, columns(step)) for step in steps}
        if label == "read":
            assert not any("embedding" in df.columns for df in loaded.values())
        targets = {name.split(".")[0]: str(tmp_path / label / name) for name in pages_step.PAGES}
        (tmp_path / label).mkdir()
        pages_step.write_pages(loaded, targets, settings)
        pages[label] = {n: (tmp_path / label / n).read_bytes() for n in pages_step.PAGES if n.endswith(".html")}
    assert pages["read"] == pages["whole"]
    assert b"<td>" in pages["read"]["errors.html"]  # the sample archive's bad files are listed
