"""What a user sees, in a real browser: the report from a file:// URL, and the attention explorer in JupyterLab.

Headless Chromium through Selenium, with name resolution switched off (``--host-resolver-rules``),
so anything the pages would fetch from the network fails loudly as a console error. Skipped, with
the reason, where no Chromium and chromedriver are installed (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them when it can).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="browser test: no Chromium and chromedriver here "
                                       "(Debian: apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_until_loaded(driver, seconds: float = 60) -> None:
    """The page's load event has fired. get() normally returns after it, but under load (a CI run on
    2 busy cores) it was seen to return while the report still read 'loading'."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(lambda d: d.execute_script("return document.readyState") == "complete")


def severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_report_opens_offline_loads_every_image_fits_the_page_and_sorts(browser, tmp_path):
    import yaml
    from selenium.webdriver.common.by import By
    from test_report import write_cell

    from slotlib.cli import main

    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"grid": {"head": ["scouter", "slot", "linear"]}, "seeds": [0, 1]}))
    for n, (head, seed, val, test) in enumerate([("scouter", 0, 0.91, 0.90), ("scouter", 1, 0.93, 0.92),
                                                 ("slot", 0, 0.88, 0.95), ("linear", 0, 0.89, 0.87)]):
        write_cell(tmp_path, f"{head}_seed{seed}-{n:02d}", head, seed, val, test)
    write_cell(tmp_path, "linear_seed1-99", "linear", 1, None, None, status="failed", error="ValueError: boom")
    assert main(["report", str(tmp_path)]) == 0

    browser.get((tmp_path / "report.html").as_uri())
    wait_until_loaded(browser)
    images = browser.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert len(images) >= 8 and all(images), images
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), \
        "the page scrolls sideways: a table or figure is wider than the window"
    assert "Best cell: scouter_seed1-01" in browser.find_element(By.CLASS_NAME, "slotlib-headline").text

    table = browser.find_element(By.CSS_SELECTOR, ".slotlib-table table")
    header = next(th for th in table.find_elements(By.TAG_NAME, "th") if th.text.startswith("test_acc"))
    column = [th.text.split()[0] for th in table.find_elements(By.TAG_NAME, "th")].index("test_acc")

    def shown():
        return [float(row.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-v"))
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    assert shown() != sorted(shown())            # ranked by validation, not by test
    header.click()
    assert shown() == sorted(shown())
    header.click()
    assert shown() == sorted(shown(), reverse=True)
    assert severe_console_messages(browser) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, tiny_run):
    """JupyterLab serving a copy of notebooks/attention.ipynb pointed at a tiny finished cell."""
    import nbformat

    from slotlib.runs.grid import NOTEBOOKS

    run_dir, _ = tiny_run
    nb = nbformat.read(NOTEBOOKS / "attention.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f"run_dir = {str(run_dir)!r}\nsplit = 'test'\nn_tiles = 2\nmax_tiles = 40\ntile_seed = 0\n" \
                  f"data_root = None\ndevice = 'cpu'\n"
    nbformat.write(nb, tmp_path / "attention.ipynb")
    port, token = free_port(), "slotlib-test"
    env = {**os.environ, "SLOTLIB_CACHE": str(tmp_path / "cache"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jconfig"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jruntime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "jsettings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jworkspaces")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--expose-app-in-browser",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/lab/tree/attention.ipynb?token={token}"
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


def test_attention_explorer_runs_in_jupyterlab_and_follows_the_class_selection(browser, lab):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(lab)
    wait = WebDriverWait(browser, 240, poll_frequency=0.5)
    wait.until(lambda d: d.execute_script(
        "const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
        "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle')"))
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def explorer_image(d):
        """The explorer's last image, or None while there is none, or while the widget redraws it
        (the element found can be replaced before its src is read: a stale element)."""
        images = d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-output img, .jp-OutputArea .jupyter-widgets-output-area img")
        try:
            return images[-1].get_attribute("src") if images else None
        except StaleElementReferenceException:
            return None

    first = wait.until(explorer_image)
    errors = browser.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr'] pre")
    assert not [e.text for e in errors if "Traceback" in e.text or "Error" in e.text]
    chooser = Select(browser.find_elements(By.CSS_SELECTOR, ".jupyter-widgets select")[0])
    assert chooser.first_selected_option.text == "all classes"
    chooser.select_by_index(3)                   # a single class
    def another_image(d):
        src = explorer_image(d)
        return src if src not in (None, first) else None

    assert wait.until(another_image).startswith("data:image/png")
    json.dumps(severe_console_messages(browser))  # read (and so cleared); lab's own console noise is not ours to judge
