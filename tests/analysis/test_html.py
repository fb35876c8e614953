"""The HTML report is self-contained and renders in headless Chromium: all figures, no errors.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library only.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pandas as pd
import pytest
from synthetic_store import trial_row

from fp4sweep.analysis import analyse, build_report
from fp4sweep.cli import main

CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    CHROMEDRIVER is None or shutil.which("chromium") is None,
    reason="headless rendering needs the Debian packages chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver)",
)
WINDOW = (1400, 1000)  # the page's tables must fit a window this wide
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# What the page reports about itself once loaded: its figures and any resources it fetched.
INSPECT = """
return {
  images: Array.from(document.images, img => ({
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight})),
  fetched: performance.getEntriesByType("resource").map(entry => entry.name),
  overflow: Array.from(document.querySelectorAll(".scroll"), box => box.scrollWidth - box.clientWidth),
  pageWidth: document.documentElement.scrollWidth,
  windowWidth: window.innerWidth,
  text: document.body.innerText,
};
"""


def sweep_with_everything() -> pd.DataFrame:
    """Two tasks, two axes, a diverged and a failed trial, step times on one task only."""
    rows = []
    for seed in range(3):
        for task, step_s in (("gpt", 0.1), ("mnist", None)):
            rows.append(trial_row(task, seed, "bf16", val_loss=2.0, step_s=step_s,
                                  axes={"scale": None, "rounding_bwd": None}))
            for i, (scale, rounding) in enumerate(
                [(s, r) for s in ("e8m0", "ue4m3", "ue5m3") for r in ("rne", "sr")]
            ):
                status = "diverged" if (seed, scale, rounding) == (0, "e8m0", "rne") else "done"
                gap = 0.3 - 0.05 * i + 0.01 * seed
                rows.append(trial_row(
                    task, seed, f"{scale}/{rounding}",
                    axes={"scale": scale, "rounding_bwd": rounding},
                    status=status, val_loss=2.0 * (1 + gap), overhead=0.02 * i + 0.01 * (i % 2),
                    step_s=None if step_s is None else step_s * (1 + 0.1 * i),
                ))
    rows.append(trial_row("gpt", 0, "int4/sr", axes={"scale": "e8m0", "rounding_bwd": "sr"},
                          status="failed"))
    # A preset: no axis values. It must sit beside the effects, not make them inestimable.
    rows += [trial_row(task, seed, "nvfp4", val_loss=2.5, overhead=0.15,
                       axes={"scale": None, "rounding_bwd": None})
             for seed in range(3) for task in ("gpt", "mnist")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    trials = sweep_with_everything()
    skipped = "corrupt file trials/part-7.parquet was skipped"
    page = build_report(trials, out_dir, problems=[skipped])
    analysis = analyse(trials)
    fitted_tasks = analysis.effects.main[["task", "size"]].drop_duplicates()
    expected_figures = len(analysis.hypervolumes) + len(fitted_tasks)
    return page, expected_figures


def test_page_references_nothing_outside_itself(report_page):
    page, expected_figures = report_page
    text = page.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    sources = re.findall(r'\bsrc="([^"]*)"', text)
    assert len(sources) == expected_figures == 5  # gpt: 2 fronts + effects; mnist: front + effects
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    links = re.findall(r'\bhref="([^"]*)"', text)
    assert links and all(re.fullmatch(r"[\w.]+\.(csv|json)", link) for link in links)
    for link in links:
        assert (page.parent / link).is_file(), link
    assert "corrupt file trials/part-7.parquet was skipped" in text
    assert "Not estimated" not in text and "(unset)" not in text
    assert "<h2>Main findings</h2>" in text and "<h3>Presets</h3>" in text


@needs_chromium
def test_renders_in_headless_chromium_with_every_figure_and_no_errors(report_page, tmp_path):
    page, expected_figures = report_page
    broken = tmp_path / "broken.html"
    remote_image = '<body><img src="https://example.invalid/x.png">'
    broken.write_text(page.read_text().replace("<body>", remote_image, 1))

    with Chromium(tmp_path / "profile") as browser:
        shown, errors = browser.open(page.as_uri())
        # The same check on a page with a remote image must fail, or it proves nothing.
        shown_broken, errors_broken = browser.open(broken.as_uri())

    assert errors == []
    assert shown["fetched"] == []
    assert shown["pageWidth"] <= shown["windowWidth"] == WINDOW[0]
    assert max(shown["overflow"]) <= 0  # no table scrolls sideways
    assert len(shown["images"]) == expected_figures
    for image in shown["images"]:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    assert any("example.invalid" in error for error in errors_broken)
    assert any(image["width"] == 0 for image in shown_broken["images"])


class Chromium:
    """A headless Chromium session under chromedriver, closed on exit."""

    def __init__(self, profile_dir):
        self.profile_dir = profile_dir

    def __enter__(self) -> Chromium:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_until_ready()
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}"]
                },
                "goog:loggingPrefs": {"browser": "ALL"},
            }
            session = self._call(
                "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}}
            )
        except BaseException:
            self._stop_driver()
            raise
        self.session = f"/session/{session['sessionId']}"
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self._stop_driver()

    def open(self, url: str) -> tuple[dict, list[str]]:
        """Load ``url``; return what the page says about itself and its console errors."""
        self._call("POST", f"{self.session}/url", {"url": url})
        shown = self._call("POST", f"{self.session}/execute/sync", {"script": INSPECT, "args": []})
        log = self._call("POST", f"{self.session}/se/log", {"type": "browser"})
        return shown, [entry["message"] for entry in log if entry["level"] == "SEVERE"]

    def screenshot(self) -> bytes:
        """The visible window as PNG bytes."""
        return base64.b64decode(self._call("GET", f"{self.session}/screenshot"))

    def _wait_until_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromedriver at {self.url} not ready after {timeout_s} s")
            time.sleep(0.1)

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)["value"]

    def _stop_driver(self) -> None:
        self.driver.terminate()
        self.driver.wait(timeout=10)


@pytest.mark.slow
@needs_chromium
def test_smoke_sweep_report_shows_a_finding_and_a_front(tmp_path):
    """The README's smoke sweep, run and reported as a user would: its page must show estimated
    effects with one resolved, a front of more than one recipe and a hypervolume above zero."""
    store, out = tmp_path / "smoke", tmp_path / "report"
    assert main(["run", "+sweep=smoke", f"results_dir={store}"]) == 0
    assert main(["report", str(store), "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    fronts = [row for row in summary["hypervolumes"] if row["overhead"] == "model"]
    assert fronts and all(row["n_front"] > 1 and row["hypervolume"] > 0 for row in fronts)
    assert summary["findings"] and all(" by " in finding for finding in summary["findings"])

    with Chromium(tmp_path / "profile") as browser:
        shown, errors = browser.open((out / "report.html").as_uri())
        (out / "screenshot.png").write_bytes(browser.screenshot())
    assert errors == [] and shown["fetched"] == []
    assert "Not estimated" not in shown["text"] and "(unset)" not in shown["text"]
    assert "lowers the loss gap by" in shown["text"]  # a resolved effect, read on the page
    assert "axis defaults" not in shown["text"]
    # The all-defaults recipe is off this front; its tables name it by the preset it equals.
    assert "mxfp4 (defaults)" in (out / "recipes.csv").read_text()
    assert shown["pageWidth"] <= shown["windowWidth"] and max(shown["overflow"]) <= 0
    assert all(image["complete"] and image["width"] > 300 for image in shown["images"])
