"""Lab 00 in a real browser: JupyterLab on localhost, driven through headless Chromium.

The test starts ``jupyter lab`` on a free localhost port (a token, a fresh root folder holding a copy of
``labs/00_tour.ipynb``, fresh settings and workspaces folders, ``DISTILL_LAB_SCALE=ci``), opens the lab in
Debian's ``/usr/bin/chromium`` through Playwright (the system browser: nothing is downloaded), runs all
cells from the Run menu and waits until no cell is queued or running. It then checks that every code cell
ran without an error, that figures rendered as images, and that ``widgets.interact`` rendered as a live
widget (a dropdown and a slider whose output holds a figure, not the text form) which redraws when the
dropdown changes. A screenshot of the widget and the figures goes to pytest's tmp folder and, when
``DISTILL_LAB_SCREENSHOTS`` names a folder, there too.

It is skipped, with the command that installs the missing piece, only where the browser or Playwright is
missing; ``.ci/run`` installs both.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "labs" / "00_tour.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 180   # JupyterLab's first start on a busy 2-core machine
RUN_ALL_S = 1200       # lab 00 at ci: about 3 min on 2 cores beside other jobs, over 15 min when they are crowded
UI_S = 120             # any one step of the page (load, kernel start, menu, widget redraw)

# its own worker: the file is one xdist group under --dist loadfile (and under loadgroup)
pytestmark = pytest.mark.xdist_group("browser")

# settings for the fresh JupyterLab user-settings folder: no news or update pop-ups over the notebook, and
# every cell kept in the page (no virtual scrolling), so the checks below see all of them
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _requirements():
    """Skip, naming the missing piece and its install command, when the browser or Playwright is absent."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's browser with "
                    "`apt-get install -y --no-install-recommends chromium` (.ci/run does)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the Python package playwright is missing: `pip install -e \".[test]\"` "
                    "(or `pip install playwright`); the system Chromium is used, so no `playwright install`")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``jupyter lab`` in its own session on a free port, with everything it writes in one temporary folder."""

    def __init__(self, base):
        self.base = base
        self.root = base / "root"
        self.root.mkdir()
        shutil.copy(LAB, self.root / LAB.name)
        settings = base / "settings"
        for name, values in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        (base / "workspaces").mkdir()
        self.port = _free_port()
        self.token = os.urandom(16).hex()
        self.url = f"http://127.0.0.1:{self.port}"
        # the kernels import this checkout's package, wherever the editable install points
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, DISTILL_LAB_SCALE="ci", PYTHONPATH=path, JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(base / "runtime"))
        self.log_path = base / "jupyter.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path, method="GET"):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def wait_ready(self):
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise AssertionError(f"jupyter lab did not answer within {SERVER_START_S} s:\n{self.log_tail()}")

    def wait_kernel_idle(self):
        """The notebook's kernel has started and is idle (the REST API's view, not the page's)."""
        deadline, kernels = time.monotonic() + UI_S, None
        while time.monotonic() < deadline:
            try:
                kernels = self.api("/api/kernels")
            except (urllib.error.URLError, OSError) as e:  # a busy server can answer 500 while a kernel starts
                kernels = repr(e)
            else:
                if kernels and all(k["execution_state"] == "idle" for k in kernels):
                    return
            time.sleep(0.5)
        raise AssertionError(f"no idle kernel within {UI_S} s: {kernels}\n{self.log_tail()}")

    def log_tail(self, n=4000):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self):
        """Shut the kernels and the server down; whatever is left of its session group is killed."""
        if self.proc.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
                self.proc.wait(timeout=30)
            except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # its own session: the server and the kernels it started
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


@pytest.fixture
def server():
    _requirements()
    base = Path(tempfile.mkdtemp(prefix="distill_lab_browser_"))
    srv = None
    try:
        srv = Server(base)
        srv.wait_ready()
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(base, ignore_errors=True)


# every code cell's prompt: "[3]:" ran, "[*]:" queued or running, "[ ]:" not run; null for a cell whose
# code is hidden (the lab's exercise solutions): its placeholder shows no prompt
PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell'))
    .map(c => c.querySelector('.jp-InputPlaceholder') ? null
              : ((c.querySelector('.jp-InputArea-prompt') || {}).textContent || '').trim())"""


def _cell_report(page):
    """Each code cell's prompt and the start of its outputs, for a failure message."""
    cells = page.evaluate("""() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell'))
        .map(c => [(c.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
                   Array.from(c.querySelectorAll('.jp-OutputArea-output')).map(o => o.innerText)
                       .join('\\n').slice(0, 1500)])""")
    return "\n".join(f"{p} {out}" for p, out in cells)


def _run_all(page, tries=3):
    """Run > Run All Cells, with the notebook the current widget (else the menu item is disabled).

    Run All shows at once: every code cell's prompt turns "[*]:" (queued) or, if fast, a number. The menu
    is tried again if it did not take (an early click can land before the notebook is current)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries):
        page.locator(".jp-Notebook .jp-Cell").first.click()  # the notebook current, in command mode
        page.keyboard.press("Escape")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        item = page.get_by_role("menuitem", name=re.compile(r"^Run All Cells"))
        if item.get_attribute("aria-disabled") == "true":
            page.keyboard.press("Escape")
            page.wait_for_timeout(2000)
            continue
        item.click()
        try:
            page.wait_for_function(f"() => ({PROMPTS_JS})().some(p => p !== null && p !== '[ ]:')",
                                   timeout=30_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"Run > Run All Cells did not start lab 00 in {tries} tries:\n{_cell_report(page)}")


def _wait_run_all(page, server):
    """Until no cell is queued or running: no "[*]:" prompt and the kernel idle, seen twice a second apart
    (a cell with hidden code shows no prompt, so the kernel's state covers it)."""
    deadline, done = time.monotonic() + RUN_ALL_S, 0
    while time.monotonic() < deadline:
        busy = any(p and "*" in p for p in page.evaluate(PROMPTS_JS))
        if not busy:
            try:
                kernels = server.api("/api/kernels")
            except (urllib.error.URLError, OSError):
                kernels = None
            busy = not kernels or any(k["execution_state"] != "idle" for k in kernels)
        done = 0 if busy else done + 1
        if done == 2:
            return
        page.wait_for_timeout(1000)
    raise AssertionError(f"lab 00 still running after {RUN_ALL_S} s:\n{_cell_report(page)}")


def test_lab00_runs_in_jupyterlab(server, tmp_path):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="distill_lab_chromium_")
    shots = [tmp_path / "lab00_jupyterlab.png"]
    if os.environ.get("DISTILL_LAB_SCREENSHOTS"):
        folder = Path(os.environ["DISTILL_LAB_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shots.append(folder / shots[0].name)
    try:
        with sync_playwright() as pw:
            # a persistent context is how Playwright takes a fresh --user-data-dir; headless comes with the args
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1300}, timeout=UI_S * 1000)
            try:
                page = browser.new_page()
                page.set_default_timeout(UI_S * 1000)
                try:
                    _run_lab(page, server, shots)
                except BaseException:  # what the page showed, beside the failure
                    _save(page, [s.with_name("lab00_jupyterlab_failure.png") for s in shots])
                    raise
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _run_lab(page, server, shots):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    start = time.monotonic()

    def mark(what):  # where the time went, in the report of a failed or slow run (pytest -rP shows it)
        print(f"{time.monotonic() - start:6.1f} s  {what}")

    page.goto(f"{server.url}/lab/tree/{LAB.name}?token={server.token}")
    # every code cell of the file is in the page, and the kernel has started: ready to run
    n_code = sum(c["cell_type"] == "code" for c in json.loads(LAB.read_text())["cells"])
    try:
        page.wait_for_function(f"n => ({PROMPTS_JS})().length === n", arg=n_code)
    except PlaywrightTimeout:
        raise AssertionError(f"lab 00 opened with {len(page.evaluate(PROMPTS_JS))} of its {n_code} code "
                             "cells") from None
    server.wait_kernel_idle()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    page.keyboard.press("Control+b")  # the file browser closed: the notebook gets the width
    mark("notebook open, kernel idle")
    _run_all(page)
    mark("Run All Cells started")
    _wait_run_all(page, server)
    mark("all cells ran")

    prompts = page.evaluate(PROMPTS_JS)
    not_run = [i for i, p in enumerate(prompts) if p is not None and not re.fullmatch(r"\[\d+\]:", p)]
    assert not not_run, f"code cells {not_run} did not run (an error stops Run All):\n{_cell_report(page)}"

    # figures: the panels and the NFE curve, each a PNG drawn in the page (the widget's own figure apart)
    figures = page.evaluate("""() => Array.from(document.querySelectorAll('.jp-Notebook .jp-RenderedImage img'))
        .filter(img => !img.closest('.widget-interact'))
        .map(img => [img.complete, img.naturalWidth, img.naturalHeight])""")
    assert len(figures) >= 2, f"{len(figures)} figures rendered:\n{_cell_report(page)}"
    assert all(ok and w > 100 and h > 100 for ok, w, h in figures), f"a figure is empty: {figures}"

    # the widget: interact's dropdown and slider as live controls, its output a figure (not the text form)
    widget = page.locator(".jp-Notebook .widget-interact")
    try:
        widget.first.wait_for(state="visible", timeout=UI_S * 1000)
    except PlaywrightTimeout:
        raise AssertionError("the ipywidgets widget did not render as a widget:\n" + _cell_report(page)) from None
    assert widget.count() == 1
    assert widget.locator(".widget-slider").count() == 1 and widget.locator(".widget-dropdown select").count() == 1
    plot = widget.locator(".widget-output .jp-RenderedImage img")
    plot.wait_for(state="visible")
    assert not page.get_by_text(re.compile(r"^interactive\(children=")).count(), "the widget's text form shows"

    # the widget talks to the kernel: another method in the dropdown redraws the figure
    before = plot.get_attribute("src")
    select = widget.locator(".widget-dropdown select")
    options = select.locator("option").all_inner_texts()
    assert len(options) >= 2, options
    select.select_option(label=options[1])
    page.wait_for_function("""([src]) => {
        const img = document.querySelector('.widget-interact .widget-output .jp-RenderedImage img');
        return img && img.complete && img.src !== src; }""", arg=[before])
    server.wait_kernel_idle()
    mark("the widget redrew for another method")

    # no output, the widget's included, holds an error (tracebacks render as stderr; warnings are allowed)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [t for t in errors.all_inner_texts() if re.search(r"Traceback|Error|Exception", t)]
    assert not texts, "an error in lab 00's outputs:\n" + "\n---\n".join(t[:3000] for t in texts)

    # the screenshot: the widget with its figure in view, the lab's figures above it
    widget.scroll_into_view_if_needed()
    page.evaluate("""() => { const w = document.querySelector('.widget-interact');
        w.closest('.jp-Cell').scrollIntoView({block: 'end'}); }""")
    page.wait_for_timeout(500)
    _save(page, shots)
    assert shots[0].stat().st_size > 10_000


def _save(page, paths):
    try:
        page.screenshot(path=str(paths[0]))
    except Exception as e:  # a failure's screenshot must not hide the failure
        print(f"no screenshot: {e}")
        return
    for extra in paths[1:]:
        shutil.copy(paths[0], extra)
