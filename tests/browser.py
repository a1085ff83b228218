"""A real web browser for the tests: Debian's headless Chromium, driven by selenium through Debian's
chromedriver (scripts/test-deps.sh installs both, as it installs ZooKeeper).

``page_view(driver)`` reads what a person sees on regproxy's status page, as text, in one script
call; ``screenshot`` saves a PNG under ``build/test-artifacts/`` for whoever looks at a run.

Selenium's calls block: a test whose sidecars run in its own event loop makes them in a worker
thread (``asyncio.to_thread``, or tests.wait.wait_for's ``in_thread=True``), so the sidecars go on
answering the page meanwhile.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium() -> webdriver.Chrome:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise AssertionError(
                f"{path} is missing: scripts/test-deps.sh installs chromium, chromium-driver"
            )
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--window-size=1400,1600",
    ):
        options.add_argument(arg)
    # The driver's path is given: selenium's own driver manager never runs (nor downloads anything).
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """The whole page, beyond the window too, as ``build/test-artifacts/<name>.png``; its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


# What the status page shows, read from its DOM as text (and whether each chart has pixels drawn).
_VIEW_JS = """
const text = (node) => (node ? node.textContent.trim() : null);
const painted = (canvas) => {
  if (!canvas || !canvas.width) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i]) n++;
  return n;
};
const rows = (selector, map) => [...document.querySelectorAll(selector)].map(map);
return {
  ready: document.getElementById("readiness").dataset.ready,
  readiness: text(document.getElementById("readiness")),
  reasons: rows("#readiness-reasons li", text),
  facts: Object.fromEntries(rows("#sidecar-facts dd", (d) => [d.dataset.fact, text(d)])),
  registries: Object.fromEntries(
    rows("#registries tr[data-registry]", (r) => [r.dataset.registry, text(r.cells[1])])),
  publications: rows("#publications tr[data-service]", (r) => ({
    service: r.dataset.service, app_port: text(r.cells[1]), app: text(r.cells[2]),
    registered: text(r.cells[4]), url: text(r.cells[5]),
  })),
  clusters: rows(".cluster", (c) => ({
    name: c.dataset.cluster, listener: c.dataset.listener, meta: text(c.querySelector(".meta")),
    hosts: rows(`.cluster[data-cluster="${CSS.escape(c.dataset.cluster)}"] tr[data-host]`, (r) => ({
      address: r.dataset.host, state: r.dataset.state, shown: text(r.querySelector(".state")),
      reason: text(r.querySelector(".reason")), found: text(r.cells[2]), weight: text(r.cells[3]),
      effective: text(r.cells[4]), in_flight: text(r.cells[6]), rps: text(r.cells[7]), eps: text(r.cells[8]),
      requests: text(r.cells[9]),
    })),
  })),
  charts: rows(".chart-row", (r) => ({
    service: r.dataset.service, listener: r.dataset.listener, rps: Number(r.dataset.rps),
    now: text(r.querySelector(".now")), painted: painted(r.querySelector("canvas.rates")),
    latency_painted: painted(r.querySelector("canvas.latency")),
  })),
  routes: rows("#routes tr[data-route]", (r) => ({
    name: r.dataset.route, from: text(r.cells[2]), cluster: text(r.cells[4]),
  })),
  in_force: rows("#rules-in-force tr[data-rule]", (r) => ({
    rule: r.dataset.rule, source: text(r.cells[1]), state: text(r.cells[3]),
  })),
  refused: rows("#rules-refused tr[data-rule]", (r) => ({
    rule: r.dataset.rule, source: text(r.cells[1]), reason: text(r.cells[2]), message: text(r.cells[3]),
  })),
  message: document.getElementById("message").hidden ? null : text(document.getElementById("message")),
  token_form: !document.getElementById("token-form").hidden,
};
"""


def page_view(driver: webdriver.Chrome) -> dict[str, Any]:
    view: dict[str, Any] = driver.execute_script(_VIEW_JS)
    return view


def cluster_hosts(view: dict[str, Any], cluster: str) -> dict[str, dict[str, Any]]:
    """The host rows the page shows for a cluster, by address ({} while it shows none)."""
    for c in view["clusters"]:
        if c["name"] == cluster:
            return {h["address"]: h for h in c["hosts"]}
    return {}


async def until(
    driver: webdriver.Chrome, check: Callable[[dict[str, Any]], object], what: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll the page (in a worker thread) until ``check(page_view(...))`` is true; that view.  On
    timeout, the AssertionError shows the last view."""
    seen: dict[str, Any] = {}

    def look() -> object:
        seen["view"] = page_view(driver)
        return check(seen["view"])

    await wait_for(look, timeout, what, in_thread=True, interval=0.25, detail=lambda: repr(seen.get("view")))
    view: dict[str, Any] = seen["view"]
    return view


def click_and_answer(driver: webdriver.Chrome, button_id: str, *, accept: bool = True) -> str:
    """Click a button that asks for confirmation; accept or dismiss the browser's dialog; its question."""
    driver.find_element(By.ID, button_id).click()
    dialog = WebDriverWait(driver, 5).until(expected_conditions.alert_is_present())
    question = dialog.text
    if accept:
        dialog.accept()
    else:
        dialog.dismiss()
    return question
