"""Real headless Chromium for tests of the HTML pages (report gallery, compare page), through Selenium.

Selenium drives the system's Chromium through the chromedriver that ships with it (Debian's `chromium` and
`chromium-driver` come in matching versions), so nothing is downloaded at test time. Use it as

    with chromium_page() as page:
        page.open(out / "index.html")
        assert page.run_js("return document.images.length") > 0
        assert page.console_errors() == []
        page.screenshot(artifact("report.png"))

When Chromium, chromedriver or selenium is missing the test is skipped, except under CI (env var CI set),
where it fails: CI installs them (.ci/run). Screenshots go to $GRADCAM_TEST_ARTIFACTS (default
tests/artifacts/, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def artifact(name: str) -> Path:
    """A path for a test artifact (screenshot) in $GRADCAM_TEST_ARTIFACTS or tests/artifacts/."""
    folder = Path(os.environ.get("GRADCAM_TEST_ARTIFACTS") or ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _find(env: str, candidates: tuple[str, ...], name: str) -> str | None:
    for path in (os.environ.get(env), *candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    return None


def _unavailable(reason: str) -> None:
    """Skip locally; fail under CI, where the browser is meant to be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


class BrowserPage:
    """One Chromium tab: open a local file, run JS, read the console, take screenshots."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self._log: list[dict[str, Any]] = []

    def open(self, path: Path | str) -> None:
        """Load a local file (or URL) and wait until the document has loaded; resets the console log."""
        target = path if isinstance(path, str) and "://" in path else Path(path).resolve().as_uri()
        self._drain()
        self._log.clear()
        self.driver.get(target)
        self.wait_for("return document.readyState === 'complete'")

    def run_js(self, script: str, *args: Any) -> Any:
        """`execute_script`: the script's `return` value; DOM elements come back as WebElements."""
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, timeout: float = 10.0, *args: Any) -> Any:
        """Poll a JS expression script (with `return`) until it is truthy; fails the test after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run_js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for: {script}", pytrace=False)
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """Click the first element matching a CSS selector (a real click, as a user would)."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def select(self, selector: str, value: str) -> None:
        """Choose the option with `value` in the <select> matching a CSS selector (fires `change`)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.select import Select

        Select(self.driver.find_element(By.CSS_SELECTOR, selector)).select_by_value(value)

    def press(self, key: str) -> None:
        """Send a key to the focused element: a character, or a Selenium `Keys` name such as "ESCAPE"."""
        from selenium.webdriver.common.keys import Keys

        self.driver.switch_to.active_element.send_keys(getattr(Keys, key, key))

    def _drain(self) -> None:
        self._log.extend(self.driver.get_log("browser"))

    def console_log(self) -> list[dict[str, Any]]:
        """Every console entry since the last open() (`level`, `message`, `source`)."""
        self._drain()
        return list(self._log)

    def console_errors(self) -> list[str]:
        """Messages of the SEVERE console entries (JS errors, failed loads) since the last open()."""
        return [entry["message"] for entry in self.console_log() if entry.get("level") == "SEVERE"]

    def screenshot(self, path: Path | str, full_page: bool = False) -> Path:
        """Save a PNG of the viewport, or of the whole page with `full_page`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            import base64

            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path


@contextmanager
def chromium_page(width: int = 1280, height: int = 900, dark: bool = False) -> Iterator[BrowserPage]:
    """A headless Chromium tab for the duration of the block (skips or fails when unavailable, see above)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    binary = _find("CHROMIUM", CHROMIUM_CANDIDATES, "chromium")
    driver_path = _find("CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver")
    if binary is None or driver_path is None:
        _unavailable("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # containers and root, as in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        scheme = {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [scheme]})
        yield BrowserPage(driver)
    finally:
        driver.quit()
