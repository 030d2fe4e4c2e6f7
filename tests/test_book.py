"""The book, built and opened in a real browser.

``book/build --quick`` executes every chapter in quick mode (``MINIMASKRCNN_QUICK=1``; a cell
that raises fails the build, so this is where CI runs the chapters, each once) and renders the
chapters and docs/ to HTML. Headless Chromium (Debian's ``chromium`` with its
``chromium-driver``, driven by Selenium; no browser is downloaded) then opens the site through a
local HTTP server and checks what a reader needs:

- every page loads without a console error, and every image on it has loaded;
- the search for "RoIAlign" lists chapter 4;
- following "next" from the first page reaches every chapter, in order, and "previous" walks
  back the same way.

Chromium opens each page once (the ``visits`` fixture records its console errors, its images
that did not load and its "next" / "previous" links as the rendered page gives them); the walks
follow the recorded links instead of loading every page a second and third time.

``MINIMASKRCNN_BOOK_DIR=DIR`` reuses a site already built into ``DIR`` (``book/build --quick
DIR``) instead of building one. Without Chromium the browser tests are skipped with the reason,
unless ``MINIMASKRCNN_REQUIRE_BROWSER=1`` (what ``.ci/run`` sets), which makes a missing browser
a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BUILD_TIMEOUT_S = 3600


def _browser_missing() -> str | None:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        return "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401  (optional: the dev extra installs it)
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site's html folder."""
    reuse = os.environ.get("MINIMASKRCNN_BOOK_DIR")
    if reuse:
        html = Path(reuse) / "html"
        assert (html / "book" / "index.html").exists(), f"{reuse}: no built book there"
        return html
    out = tmp_path_factory.mktemp("book")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run([str(ROOT / "book" / "build"), "--quick", str(out)], env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"book/build --quick failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-12000:]}", pytrace=False)
    return out / "html"


def test_every_chapter_and_doc_is_a_page(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    missing = [f"notebooks/{c}.html" for c in CHAPTERS if f"notebooks/{c}.html" not in pages]
    missing += [f"docs/{d.stem}.html" for d in (ROOT / "docs").glob("*.md")
                if f"docs/{d.stem}.html" not in pages]
    assert not missing, f"pages not built: {missing}"


def test_chapters_carry_their_outputs(site):
    # the executed chapters: each page holds output cells, and the chapters that draw have figures
    empty = []
    for c in CHAPTERS:
        html = (site / "notebooks" / f"{c}.html").read_text(encoding="utf-8")
        if "cell_output" not in html:
            empty.append(c)
    assert not empty, f"chapters without any output: {empty}"
    figures = sum((site / "notebooks" / f"{c}.html").read_text(encoding="utf-8").count("<img")
                  for c in CHAPTERS)
    assert figures >= len(CHAPTERS), f"only {figures} figures in {len(CHAPTERS)} chapters"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports failures itself
        pass


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        if os.environ.get("MINIMASKRCNN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MINIMASKRCNN_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver  # noqa: PLC0415  (optional: only with a browser)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415  (same)

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, url: str) -> list[str]:
    """Load ``url``, wait until the page and its images are complete; return the console's
    errors (level SEVERE) logged meanwhile."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(url)
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.complete ? 0 :"
        " new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => done());")
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


NEXT, PREVIOUS = "a.right-next", "a.left-prev"


class Visit(NamedTuple):
    """What one page showed in Chromium: console errors, the images that did not load, and the
    site-relative targets of its first "next" and "previous" links (``None`` without one)."""

    errors: list[str]
    broken_images: list[str]
    next: str | None
    previous: str | None


def _relative(url: str) -> str:
    return re.sub(r"^https?://[^/]+/", "", url).split("#")[0]


@pytest.fixture(scope="module")
def visits(site, server, browser) -> dict[str, Visit]:
    """Every page of the site (``_static/`` and ``_sources/`` aside) opened once, by its
    site-relative path."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415  (optional: only with a browser)

    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                   if not p.relative_to(site).as_posix().startswith(("_static/", "_sources/")))
    out = {}
    for page in pages:
        errors = _open(browser, f"{server}/{page}")
        broken = browser.execute_script(
            "return Array.from(document.images)"
            ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")
        links = [browser.find_elements(By.CSS_SELECTOR, sel) for sel in (NEXT, PREVIOUS)]
        nxt, prev = (_relative(ls[0].get_attribute("href")) if ls else None for ls in links)
        out[page] = Visit(errors, broken, nxt, prev)
    return out


def test_every_page_loads_cleanly(visits):
    problems = []
    for page, v in visits.items():
        problems += [f"{page}: console error: {e}" for e in v.errors]
        problems += [f"{page}: image not loaded: {src}" for src in v.broken_images]
    assert not problems, "\n".join(problems)
    assert len(visits) >= len(CHAPTERS) + 9


def test_search_for_roialign_lists_chapter_4(server, browser):
    from selenium.webdriver.common.by import By  # noqa: PLC0415  (optional: only with a browser)
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415  (same)

    _open(browser, f"{server}/search.html?q=RoIAlign")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li"))
    hits = [a.get_attribute("href") for a in
            browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")]
    assert any("notebooks/04_roi_pool_warp_align.html" in h for h in hits), hits


def _walk(visits: dict[str, Visit], start: str, link: str, steps: int) -> list[str]:
    """The pages reached from ``start`` by following each page's ``link`` ("next" or
    "previous") at most ``steps`` times; a target that is not a page of the site ends it."""
    seen = [start]
    for _ in range(steps):
        here = visits.get(seen[-1])
        target = getattr(here, link) if here else None
        if target is None:
            break
        seen.append(target)
    return seen


def test_previous_next_reach_every_chapter_in_order(visits):
    forward = _walk(visits, "book/index.html", "next", 60)
    chapters = [p for p in forward if p.startswith("notebooks/")]
    assert chapters == [f"notebooks/{c}.html" for c in CHAPTERS], forward
    backward = _walk(visits, f"notebooks/{CHAPTERS[-1]}.html", "previous", len(CHAPTERS))
    assert backward[: len(CHAPTERS)] == [f"notebooks/{c}.html" for c in reversed(CHAPTERS)]
    assert backward[len(CHAPTERS)] == "book/index.html"
