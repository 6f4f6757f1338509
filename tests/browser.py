"""Real Chromium for the pages' browser tests (tests/test_page.py, tests/test_admin_page.py):
Debian's /usr/bin/chromium, driven by Playwright with the flags that keep it off the network.
The browser and context fixtures that use these live in tests/conftest.py."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = REPO / "docs" / "screenshots"
SCREENSHOT_LIMIT = 200 * 1024


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshot tests write: docs/screenshots when SCREENSHOTS=1 asks for the
    README's pictures to be redrawn, else the test's own temporary directory (a test run
    leaves the repository as it was)."""
    if os.environ.get("SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path
# Records what the page's Content-Security-Policy refused; injected by Playwright, so the
# policy does not apply to it.
WATCH_POLICY = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def docs_screenshots() -> dict:
    """name -> (size, modification time) of docs/screenshots' pictures, to show that a run
    without SCREENSHOTS=1 leaves them as they were."""
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns)
            for path in SCREENSHOTS.glob("*.png")}
