"""The MLflow UI as a user sees it: `mlflow server` on 127.0.0.1 over a store, and the
experiment's runs table read from Debian's headless Chromium through Playwright (Playwright's
own browser download does not work offline; .ci/run installs the `chromium` package).

The report's experiment links carry what the MLflow 3 UI needs to show the grid with no click
(``gbml.tracking``'s saved view: the model-training view, sorted by run name so child runs are not
folded under their sweep, the grid's tags and accuracies as columns); reading the table still
needs scrolling: the grid renders only the rows and columns in view.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

CHROMIUM = os.environ.get("GBML_CHROMIUM", "/usr/bin/chromium")
# The assistant side panel would cover a third of the table.
CLOSED_ASSISTANT = ("localStorage.setItem('mlflow.assistant.panelOpen_v1','false');"
                    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1','true');")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(store: Path, workdir: Path, timeout: float = 120):
    """``mlflow server`` over the SQLite ``store``; yields its URL once /health answers."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (workdir / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store.resolve()}", "--artifacts-destination", str(workdir / "artifacts")],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,   # uvicorn runs as a child
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})           # no job-runner workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{(workdir / 'mlflow-server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server did not answer /health within {timeout} s"
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


def js_number(x: float) -> str:
    """What JavaScript's ``String(x)`` gives: the runs table shows metric values that way."""
    if math.isnan(x) or math.isinf(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if x == 0:
        return "0"
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    ds, s = "".join(map(str, digits)), "-" if sign else ""
    k, n = len(ds), exp + len(ds)
    if k <= n <= 21:
        return s + ds + "0" * (n - k)
    if 0 < n <= 21:
        return s + ds[:n] + "." + ds[n:]
    if -6 < n <= 0:
        return s + "0." + "0" * (-n) + ds
    mantissa = ds if k == 1 else ds[0] + "." + ds[1:]
    return f"{s}{mantissa}e{'+' if n > 1 else '-'}{abs(n - 1)}"


READ_CELLS = """() => [...document.querySelectorAll('.ag-row[row-id]')].flatMap(row =>
    [...row.querySelectorAll('[role=gridcell][col-id]')].map(c =>
        [row.getAttribute('row-id'), c.getAttribute('col-id'), c.innerText.trim()]))"""
SCROLL = """([selector, property, position]) => {
    const el = document.querySelector(selector); if (!el) return -1;
    el[property] = position; el.dispatchEvent(new Event('scroll')); return el[property]; }"""
ROWS, COLUMNS = ".ag-body-viewport", ".ag-body-horizontal-scroll-viewport"


def visible_cells(page) -> dict[tuple[str, str], str]:
    """Every cell's text by (run id, column id), scrolling through the grid's virtualisation."""
    cells, top = {}, 0
    while True:
        page.evaluate(SCROLL, [ROWS, "scrollTop", top])
        left = 0
        while True:
            reached = page.evaluate(SCROLL, [COLUMNS, "scrollLeft", left])
            page.wait_for_timeout(150)
            cells.update({(run, col): text for run, col, text in page.evaluate(READ_CELLS)})
            if reached < left or reached < 0:
                break
            left = reached + 600
        scroll_top, height, total = page.evaluate(
            f"() => {{ const e = document.querySelector('{ROWS}'); return [e.scrollTop, e.clientHeight, e.scrollHeight]; }}")
        if scroll_top + height >= total:
            return cells
        top = scroll_top + height // 2


def browser_page(p, width: int = 2400):
    """A fresh Chromium context (nothing remembered: a first visit) and its page, JavaScript errors collected."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    context = browser.new_context(viewport={"width": width, "height": 1600})
    context.add_init_script(CLOSED_ASSISTANT)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return browser, page


def runs_table(page_url: str, runs: int, screenshot: Path) -> dict[tuple[str, str], str]:
    """Open ``page_url`` (an experiment's runs page) in a fresh browser, touch nothing, wait until it
    lists ``runs`` runs (at most 100: one page of the table), save a screenshot and return the cells
    (see ``visible_cells``)."""
    assert runs <= 100, "the table shows 100 runs a page; more would need its 'Load more' button"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = browser_page(p)
        page.goto(page_url)
        # The footer first says "0 matching runs" while the search is in flight: wait for the count.
        try:
            page.get_by_text(f"{runs} matching run{'s' if runs != 1 else ''}", exact=True).wait_for(timeout=60_000)
        except Exception:
            page.screenshot(path=str(screenshot))
            counts = page.get_by_text(re.compile(r"^\d+ matching runs?$")).all_inner_texts()
            raise AssertionError(f"the runs table never said '{runs} matching runs' (it says {counts}); "
                                 f"screenshot: {screenshot}") from None
        page.locator(".ag-header-cell[col-id^='metrics.']").first.wait_for()
        cells = visible_cells(page)
        # The screenshot shows the page as it opened, not where reading the cells scrolled it to.
        for viewport, position in ((ROWS, "scrollTop"), (COLUMNS, "scrollLeft")):
            page.evaluate(SCROLL, [viewport, position, 0])
        page.wait_for_timeout(300)
        page.screenshot(path=str(screenshot))
        errors = page.errors
        browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    return cells


def page_text(page_url: str, expect: str, screenshot: Path) -> str:
    """The text of ``page_url`` in a fresh browser once ``expect`` shows (e.g. a run page)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = browser_page(p, width=1600)
        page.goto(page_url)
        try:
            page.get_by_text(expect).first.wait_for(timeout=60_000)
        finally:
            page.screenshot(path=str(screenshot))
        text = page.inner_text("body")
        browser.close()
    return text
