"""The README's screenshot of `report --html`: a demo catalog (tests/report_catalog.py:
a month of daily database backups with a failed night and a restore test, weekly files
backups whose newest is not off-site, a failed configuration backup), its report, and
Debian's chromium (headless, through Playwright, network blocked) photographing it.

Run from the checkout: .venv/bin/python benchmarks/report_screenshot.py [OUT.png]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/report_catalog.py, the catalog the tests check

from tests.conftest import clean_environ  # noqa: E402
from tests.report_catalog import build_history  # noqa: E402

from cosmic_backup.clock import SystemClock  # noqa: E402
from cosmic_backup.operations.context import open_runtime  # noqa: E402
from cosmic_backup.settings import load_settings  # noqa: E402

VIEWPORT = {"width": 1100, "height": 1500}


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as folder:
        app = Path(folder) / "shop"
        (app / "uploads").mkdir(parents=True)
        env = clean_environ(
            {
                "BACKUP_KEY": "screenshot passphrase 0123456789",
                "DATABASE_URL": "postgresql://shop@db.internal/shop",
                "BACKUP_REMOTE": "s3://backups/shop",
            }
        )
        build_history(open_runtime(load_settings(app, environ=env)), SystemClock().now())
        page_file = Path(folder) / "report.html"
        command = [sys.executable, "-m", "cosmic_backup", "-C", str(app), "report"]
        subprocess.run([*command, "--html", str(page_file), "--days", "35"], env=env, check=True)
        _photograph(page_file, out)
    print(f"wrote {out}")


def _photograph(page_file: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        context = browser.new_context(viewport=VIEWPORT)
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url == page_file.as_uri() else route.abort()
            ),
        )
        page = context.new_page()
        page.goto(page_file.as_uri())
        page.screenshot(path=str(out))  # the top: cards, the store and the database charts
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "report.png")
