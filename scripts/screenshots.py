"""Serve the demo and drive it in headless Chromium (Playwright): load, search, open each page,
save a screenshot of each. Used by tests/test_app.py (browser test) and for docs/screenshots/.

    python scripts/screenshots.py --run runs/demo-app --out docs/screenshots [--query "red dress"]

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package; no browser download.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("KALEIDO_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(run: str | Path, log: Path, port: int | None = None, timeout: float = 180):
    """The app served on 127.0.0.1 (yields its URL); stopped on exit."""
    port = port or free_port()
    env = {**os.environ, "KALEIDO_DEMO_RUN": str(run), "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "streamlit_app.py"),
                                 "--server.address", "127.0.0.1", "--server.port", str(port)],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not come up on {url}; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_idle(page, timeout: int = 180_000) -> None:
    """Until the script run the last action triggered has finished."""
    from playwright.sync_api import expect

    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=timeout)
    page.wait_for_timeout(500)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=timeout)


def drive(url: str, out: Path, query: str = "red dress") -> dict:
    """Search, then every page; screenshots in ``out``. Returns what was seen (for the test)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url)
        wait_idle(page)
        box = page.locator('[data-testid="stTextInput"] input').first
        box.fill(query)
        box.press("Enter")
        wait_idle(page)
        page.wait_for_selector('[data-testid="stImage"] img', timeout=180_000)   # not Playwright's 30 s
        images = page.locator('[data-testid="stImage"] img')
        seen["search_images"] = images.count()
        seen["search_loaded"] = sum(images.nth(i).evaluate("e => e.complete && e.naturalWidth > 0")
                                    for i in range(images.count()))
        seen["search_text"] = page.locator('[data-testid="stMain"]').inner_text()
        page.screenshot(path=str(out / "search.png"), full_page=True)
        # each page, waited on until the text its last section writes is there
        for name, marker in (("shop_the_look", "Similar products"), ("inspector", "seconds per stage"),
                             ("tagging", "Tag the catalog")):
            page.goto(f"{url}/{name}")
            page.get_by_text(marker).first.wait_for(timeout=240_000)
            wait_idle(page)
            if name == "tagging":
                page.get_by_role("button", name="Tag the catalog").click()
                page.get_by_text("All rows").first.wait_for(timeout=240_000)
                wait_idle(page)
            page.wait_for_timeout(1000)   # images fetched
            seen[f"{name}_text"] = page.locator('[data-testid="stMain"]').inner_text()
            seen[f"{name}_images"] = page.locator('[data-testid="stImage"] img').count()
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        browser.close()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "demo-app"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--query", default="red dress")
    ap.add_argument("--url", default=None, help="an app already served (else one is started on --run)")
    args = ap.parse_args()
    if args.url:
        seen = drive(args.url, args.out, args.query)
    else:
        with serve(args.run, Path("/tmp/kaleido-screenshots-server.log")) as url:
            seen = drive(url, args.out, args.query)
    print({k: v for k, v in seen.items() if not k.endswith("_text")})
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
