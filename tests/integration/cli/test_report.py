"""`report --html` in a real browser: Debian's chromium, headless, driven by Playwright
with the system browser (no browser download), the network blocked.

The page is written by the real CLI from a catalog this test builds (a failure, a restore
test, an off-site gap: tests/report_catalog.py), then checked as a person would see it.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cosmic_backup.clock import SystemClock
from cosmic_backup.operations import listing
from cosmic_backup.operations.context import open_runtime
from cosmic_backup.settings import load_settings
from tests.conftest import Project, clean_environ
from tests.report_catalog import CONFIG_ERROR, UPLOAD_ERROR, Built, build_history

CHROMIUM = Path("/usr/bin/chromium")
DB_PASSWORD = "Rep0rt-Secret-Pw-77"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
DAYS = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: .ci/run installs it"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def report(project: Project, tmp_path: Path) -> tuple[Path, Built, datetime]:
    (project.root / "uploads").mkdir()
    project.env.update(
        {
            "BACKUP_KEY": "report test passphrase 0123456",
            "DATABASE_URL": f"postgresql://shop:{DB_PASSWORD}@db.internal:5432/shop",
            "BACKUP_REMOTE": "s3://backups-bucket/shop",
        }
    )
    now = SystemClock().now()
    settings = load_settings(project.root, environ=clean_environ(project.env))
    built = build_history(open_runtime(settings), now)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    result = project.run("report", "--html", str(out), "--days", str(DAYS))
    assert result.returncode == 0, result.stderr
    assert f"wrote the report to {out}" in result.stdout
    return out, built, now


def _open(browser: Any, path: Path, viewport: dict[str, int], scheme: str = "light") -> Any:
    """The page loaded from disk; every request it tries is recorded and refused."""
    context = browser.new_context(viewport=viewport, color_scheme=scheme, java_script_enabled=True)
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))

    def only_the_page(route: Any) -> None:
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_the_page)
    page = context.new_page()
    page.goto(path.as_uri())
    page.requested = requested  # type: ignore[attr-defined]
    return page


def test_the_page_shows_the_catalog_and_makes_no_request(
    browser: Any, report: tuple[Path, Built, datetime]
) -> None:
    path, built, now = report
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names hosts and paths
    html = path.read_text()
    assert DB_PASSWORD not in html and "<script" not in html
    page = _open(browser, path, DESKTOP)
    assert page.requested == [path.as_uri()]  # the page itself, nothing else

    cards = {
        card.get_attribute("data-component"): card.locator(".health").inner_text()
        for card in page.locator("article.card").all()
    }
    assert cards == {
        "database": "OK",
        "files": "OFFSITE-MISSING",
        "config": "FAILING",
        "off-site": "OFFSITE-MISSING",
    }
    config = page.locator("article[data-component=config]")
    assert CONFIG_ERROR in config.locator(".message").inner_text()
    assert "1 min ago" in page.locator(
        "article[data-component=database] dd"
    ).first.inner_text() or (
        "min ago" in page.locator("article[data-component=database] dd").first.inner_text()
    )
    tested = page.locator("article[data-component=database] dd[data-fact='last restore test']")
    assert tested.inner_text().endswith("passed")
    offsite = page.locator("article[data-component=off-site] .message").inner_text()
    assert built.offsite_missing in offsite and UPLOAD_ERROR in offsite

    rows = page.locator("table.backups tbody tr")
    ids = [row.locator("td").first.inner_text() for row in rows.all()]
    newest_first = sorted(built.ids, key=lambda backup_id: backup_id.split("-", 1)[1], reverse=True)
    assert ids == newest_first  # every backup of the period, as `list` shows them
    failed = {
        row.locator("td").first.inner_text(): row.locator("td").nth(2).inner_text()
        for row in rows.all()
    }
    assert {i for i, status in failed.items() if status == "FAILED"} == set(built.failed)
    tested_row = page.locator("table.backups tr", has_text=built.restore_tested)
    tested_column = listing.COLUMNS.index("tested")
    assert tested_row.locator("td").nth(tested_column).inner_text() != "-"
    biggest = page.locator("table.biggest tbody tr").all_inner_texts()
    assert [line.split("\t")[0] for line in biggest] == [n for n, _ in built.biggest_tables]

    _check_charts(page, now)
    assert page.locator("footer .version").inner_text() == "0.1.0"
    assert page.locator("footer .host").inner_text() == os.uname().nodename


def _check_charts(page: Any, now: datetime) -> None:
    titles = page.locator("svg.pygal-chart .title").all_text_contents()
    for expected in (
        "the store: total size of the backups held",
        "database: size per backup",
        "database: backup duration",
        "database: rows per backup",
        "files: files per backup",
        "config: size per backup",
    ):
        assert expected in titles
    chart = page.locator("figure[data-title='database: size per backup'] svg")
    assert "size (MiB)" in chart.locator("text").all_text_contents()
    legend = chart.locator(".legends").text_content() or ""
    assert "failed backup" in legend and "restore test passed" in legend
    # The same time axis everywhere: the period's first day to today, six dates.
    labels = chart.locator(".axis.x text").all_text_contents()
    start = now - timedelta(days=DAYS)
    expected = [f"{(start + (now - start) * k / 5).astimezone():%Y-%m-%d}" for k in range(6)]
    assert [label for label in labels if label[:2] == "20"] == expected
    assert "date (local)" in chart.locator("text").all_text_contents()


@pytest.mark.parametrize(("viewport", "scheme"), [(DESKTOP, "light"), (PHONE, "dark")])
def test_it_reads_on_a_desktop_and_a_phone(
    browser: Any,
    report: tuple[Path, Built, datetime],
    viewport: dict[str, int],
    scheme: str,
    tmp_path: Path,
) -> None:
    from PIL import Image

    path, _built, _now = report
    page = _open(browser, path, viewport, scheme)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    shot = page.screenshot(full_page=True)
    (tmp_path / f"report-{viewport['width']}.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.width == viewport["width"]
    colors = image.getcolors(maxcolors=1_000_000) or []
    assert len(colors) > 50  # text, cards and charts: far from one blank colour
    background = image.getpixel((2, 2))
    dark = sum(background) < 3 * 80  # type: ignore[arg-type]
    assert dark == (scheme == "dark")


def test_a_year_of_daily_backups_stays_small(project: Project, tmp_path: Path) -> None:
    (project.root / "uploads").mkdir()
    project.env.update({"BACKUP_KEY": "report size passphrase 0123456", "DATABASE_URL": "x"})
    settings = load_settings(project.root, environ=clean_environ(project.env))
    build_history(open_runtime(settings), SystemClock().now(), database_days=365)
    out = tmp_path / "year.html"
    result = project.run("report", "--html", str(out), "--days", "365")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size < 1_000_000


def test_without_the_report_extra_it_says_how_to_install_it(project: Project) -> None:
    """pygal missing (an import that fails, as on a plain install): one sentence, exit 1."""
    out = project.root / "report.html"
    program = (
        "import sys; sys.modules['pygal'] = None; "  # None in sys.modules: ImportError
        "from cosmic_backup.cli.main import run; "
        f"sys.argv = ['cosmic-backup', '-C', {str(project.root)!r}, 'report', '--html', "
        f"{str(out)!r}]; run()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=clean_environ({"BACKUP_KEY": "report extra passphrase 012345"}),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: The HTML report needs pygal, which is not installed; install it with "
        "pip install 'cosmic-backup[report]'."
    )
    assert not out.exists()
