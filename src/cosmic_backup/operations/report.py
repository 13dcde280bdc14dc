"""`report --html`: one self-contained page of how the backups stand and have behaved.

Every figure comes from the manifests (and `status`, which reads them too). The page makes
no request: its charts are inline SVG rendered here by pygal, its style is inline, and it
has no script, so it reads the same with JavaScript off. pygal and jinja2 come with the
`[report]` extra and are imported only by this command.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from cosmic_backup import __version__
from cosmic_backup.catalog import Entry
from cosmic_backup.clock import parse_iso
from cosmic_backup.components import COMPONENT_NAMES, source_of
from cosmic_backup.errors import OperationFailed
from cosmic_backup.operations import listing
from cosmic_backup.operations.context import Runtime
from cosmic_backup.operations.status import ComponentStatus, collect, human_age, store_status
from cosmic_backup.redact import redact
from cosmic_backup.states import Health
from cosmic_backup.storage.local import replace_file

DEFAULT_DAYS = 90
AXIS_TICKS = 6  # dates on each chart's time axis, the period's first and last day included
INSTALL_HINT = "install it with pip install 'cosmic-backup[report]'"
# pygal always embeds its config for its tooltip script (which we do not load): the page
# has no script at all, and is smaller without them and pygal's comments.
_PYGAL_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL)
_PYGAL_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
SIZE_UNITS = (("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4))


@dataclass
class Card:
    """One component's "now", with the same health word and message as `status`."""

    title: str
    health: str
    healthy: bool
    message: str
    facts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Chart:
    """One chart: its SVG, or, with nothing to draw, why (an empty plot says nothing)."""

    title: str
    svg: str | None
    note: str = ""


@dataclass
class Section:
    """One component's charts over the period, and its biggest tables (database)."""

    component: str
    charts: list[Chart]
    biggest_tables: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Page:
    generated_at: str
    host: str
    version: str
    project: str
    days: int
    period: str
    cards: list[Card]
    store_chart: Chart
    store_total: str
    sections: list[Section]
    columns: list[str]
    rows: list[list[str]]
    chunk_store: str = ""  # its size, the payloads it holds and the dedup ratio; "" if none


def write_report(rt: Runtime, path: Path, days: int = DEFAULT_DAYS) -> Path:
    """Write the page to `path` atomically, mode 0600 (it names hosts and paths)."""
    pygal, jinja2 = _libraries()
    page = build_page(rt, days, pygal)
    html = _render(page, jinja2)
    try:
        replace_file(path, html.encode())
    except OSError as exc:
        raise OperationFailed(
            f"The report could not be written to {path}: {exc.strerror or exc}; "
            "pick a folder you can write."
        ) from exc
    rt.log.info("report of %d days written to %s (%d bytes)", days, path, len(html))
    return path


def _libraries() -> tuple[Any, Any]:
    try:
        import jinja2
        import pygal
    except ImportError as exc:
        raise OperationFailed(
            f"The HTML report needs {exc.name or 'pygal and jinja2'}, which is not installed; "
            f"{INSTALL_HINT}."
        ) from None
    return pygal, jinja2


# -- gathering --------------------------------------------------------------------------
def build_page(rt: Runtime, days: int, pygal: Any) -> Page:
    now = rt.clock.now()
    start = now - timedelta(days=days)
    entries = {name: _own(rt.catalog.entries(name)) for name in COMPONENT_NAMES}
    in_period = {name: [e for e in found if e.started >= start] for name, found in entries.items()}
    axis = Axis(start, now)
    cards = [_card(status, entries[status.component]) for status in collect(rt)]
    if rt.settings.remote:
        cards.append(_offsite_card(rt))
    every = sorted((e for found in in_period.values() for e in found), key=lambda e: e.started)
    return Page(
        generated_at=f"{now.astimezone():%Y-%m-%d %H:%M %Z}",
        host=socket.gethostname(),
        version=__version__,
        project=str(rt.root),
        days=days,
        period=f"{start.astimezone():%Y-%m-%d} to {now.astimezone():%Y-%m-%d}",
        cards=cards,
        store_chart=_store_chart(pygal, axis, entries),
        store_total=listing.human_size(sum(_stored(e) for f in entries.values() for e in f)),
        sections=[_section(pygal, axis, name, in_period[name]) for name in COMPONENT_NAMES],
        columns=[*listing.COLUMNS, listing.SOURCE_COLUMN],
        rows=[listing.row(entry) for entry in reversed(every)],
        chunk_store=_chunk_store_sentence(rt),
    )


def _chunk_store_sentence(rt: Runtime) -> str:
    store = store_status(rt)
    if store is None or store.dedup_ratio is None:
        return ""
    return (
        f"The chunk store keeps {listing.human_size(store.store_bytes)} for "
        f"{store.backups} chunked backups of {listing.human_size(store.plaintext_bytes)} "
        f"in all: a deduplication ratio of {store.dedup_ratio:.1f}x."
    )


def _own(entries: list[Entry]) -> list[Entry]:
    """The app's own backups: copies of a restore's other target are not its history."""
    return [e for e in entries if not e.manifest.is_other_target]


def _stored(entry: Entry) -> int:
    return entry.manifest.stored_size or 0


def _card(status: ComponentStatus, entries: list[Entry]) -> Card:
    good = status.last_good
    verified = max(
        (e.manifest.verified_at for e in entries if e.manifest.verified_at), default=None
    )
    test = status.last_restore_test
    tested = "never"
    if test:
        tested = f"{_local(test.get('at'))} {'passed' if test.get('ok') else 'FAILED'}"
    return Card(
        title=status.component,
        health=str(status.health),
        healthy=status.health.healthy,
        message=status.message,
        facts=[
            (
                "last good backup",
                f"{human_age(timedelta(seconds=good['age_seconds']))} ago" if good else "none",
            ),
            ("last verify", _local(verified)),
            ("last restore test", tested),
            ("backups held", f"{status.backups} ({listing.human_size(status.total_size)})"),
        ],
    )


def _offsite_card(rt: Runtime) -> Card:
    from cosmic_backup.operations.offsite import read_pending

    pending = read_pending(rt.catalog.root)
    destination = rt.settings.shown("remote")
    if not pending:
        return Card("off-site", str(Health.OK), True, f"every backup is copied to {destination}")
    latest_id = max(pending)
    return Card(
        "off-site",
        str(Health.OFFSITE_MISSING),
        False,
        f"{len(pending)} backup(s) not copied to {destination}, the latest {latest_id}: "
        f"{pending[latest_id].get('error', '?')} Run 'cosmic-backup sync' once the cause is fixed",
    )


def _local(stamp: str | None) -> str:
    return f"{parse_iso(stamp).astimezone():%Y-%m-%d %H:%M}" if stamp else "never"


# -- charts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """The period, the same time axis on every chart: failures and tests line up."""

    start: datetime
    end: datetime

    def labels(self) -> list[datetime]:
        step = (self.end - self.start) / (AXIS_TICKS - 1)
        return [self.start + step * index for index in range(AXIS_TICKS)]


def _chart(pygal: Any, axis: Axis, title: str, y_title: str) -> Any:
    from pygal.style import Style

    # Mid-grey text and guides read on a light and a dark page alike; the page's CSS
    # brightens them further in dark mode.
    style = Style(
        background="transparent",
        plot_background="transparent",
        foreground="#777",
        foreground_strong="#777",
        foreground_subtle="#7773",
        opacity=".9",
        colors=("#2563eb", "#9333ea", "#dc2626", "#16a34a", "#ea580c", "#0891b2"),
        font_family="system-ui, sans-serif",
        # Charts are drawn 640 wide and shown about as wide: text at a readable size.
        title_font_size=18,
        label_font_size=13,
        major_label_font_size=13,
        legend_font_size=14,
        value_font_size=13,
    )
    return pygal.DateTimeLine(
        style=style,
        js=[],  # pygal's default tooltips script is fetched from the web: none
        disable_xml_declaration=True,
        title=title,
        y_title=y_title,
        x_title="date (local)",
        x_labels=axis.labels(),
        xrange=(axis.start.timestamp(), axis.end.timestamp()),
        x_value_formatter=lambda moment: f"{moment.astimezone():%Y-%m-%d}",
        x_label_rotation=20,
        show_dots=False,
        show_x_guides=False,
        legend_at_bottom=True,
        legend_at_bottom_columns=2,
        margin_bottom=40,  # pygal's own room for the legend cuts off its second row
        legend_box_size=12,
        width=640,
        height=400,
        include_x_axis=True,
        no_data_text="nothing recorded in this period",
        truncate_legend=40,
    )


def _size_unit(sizes: Iterable[int]) -> tuple[str, int]:
    largest = max(sizes, default=0)
    return next(((u, f) for u, f in reversed(SIZE_UNITS) if largest >= f), SIZE_UNITS[0])


def _points(
    entries: Iterable[Entry], value: Callable[[Entry], float | None]
) -> list[tuple[datetime, float]]:
    return [(e.started, v) for e in entries if (v := value(e)) is not None]


def _add(chart: Any, title: str, points: list[tuple[datetime, float]], *, marker: bool) -> None:
    """A line, or (markers: failures, tests) dots with no line between them."""
    if not points:
        return
    if marker:
        chart.add(title, points, stroke=False, show_dots=True, dots_size=5)
    else:
        chart.add(title, points, show_dots=len(points) == 1)


def _section(pygal: Any, axis: Axis, component: str, entries: list[Entry]) -> Section:
    good = [e for e in entries if e.manifest.ok]
    failed = [e for e in entries if not e.manifest.ok]
    charts = [
        _size_chart(pygal, axis, component, good, failed),
        _duration_chart(pygal, axis, component, entries),
    ]
    counts = _count_chart(pygal, axis, component, good)
    if counts is not None:
        charts.append(counts)
    return Section(component, charts, _biggest_tables(good) if component == "database" else [])


def _svg(chart: Any, note: str = "Nothing recorded in this period.") -> Chart:
    """The chart as inline SVG, or its note when it has nothing to draw."""
    if not chart.raw_series:
        return Chart(chart.config.title, None, note)
    svg = _PYGAL_SCRIPT.sub("", str(chart.render(is_unicode=True)))
    return Chart(chart.config.title, _PYGAL_COMMENT.sub("", svg))


def _size_chart(
    pygal: Any, axis: Axis, component: str, good: list[Entry], failed: list[Entry]
) -> Chart:
    unit, factor = _size_unit(
        [e.manifest.plaintext_size or 0 for e in good] + [_stored(e) for e in good]
    )
    chart = _chart(pygal, axis, f"{component}: size per backup", f"size ({unit})")
    _add(
        chart,
        "stored (= added to the store)",
        _points(good, lambda e: _stored(e) / factor),
        marker=False,
    )
    _add(
        chart,
        "before compression",
        _points(good, lambda e: (e.manifest.plaintext_size or 0) / factor),
        marker=False,
    )
    _add(chart, "failed backup", [(e.started, 0.0) for e in failed], marker=True)
    for passed, title in ((True, "restore test passed"), (False, "restore test FAILED")):
        tests = [
            (parse_iso(str(t["at"])), _stored(e) / factor)
            for e in good
            if (t := e.manifest.restore_test) and bool(t.get("ok")) == passed and t.get("at")
        ]
        _add(chart, title, [(at, size) for at, size in tests if at >= axis.start], marker=True)
    return _svg(chart)


def _duration_chart(pygal: Any, axis: Axis, component: str, entries: list[Entry]) -> Chart:
    chart = _chart(pygal, axis, f"{component}: backup duration", "duration (s)")
    ok = [e for e in entries if e.manifest.ok]
    _add(chart, "duration", _points(ok, lambda e: e.manifest.duration_seconds), marker=False)
    failed = [e for e in entries if not e.manifest.ok]
    _add(
        chart, "failed backup", _points(failed, lambda e: e.manifest.duration_seconds), marker=True
    )
    return _svg(chart, "No durations recorded in this period (older versions did not record them).")


def _count_chart(pygal: Any, axis: Axis, component: str, good: list[Entry]) -> Chart | None:
    if component == "database":
        title, value = "rows", _row_total
    elif component == "files":
        title, value = "files", _file_count
    else:
        return None
    chart = _chart(pygal, axis, f"{component}: {title} per backup", title)
    _add(chart, title, _points(good, value), marker=False)
    return _svg(chart)


def _row_total(entry: Entry) -> float | None:
    counts = entry.manifest.source.get("row_counts")
    return float(sum(counts.values())) if isinstance(counts, dict) and counts else None


def _file_count(entry: Entry) -> float | None:
    files = entry.manifest.source.get("files")
    return float(files) if isinstance(files, int) else None


def _biggest_tables(good: list[Entry]) -> list[tuple[str, int]]:
    """The latest good database backup's five biggest tables, by rows."""
    if not good:
        return []
    counts: dict[str, int] = getattr(source_of(good[-1].manifest), "row_counts", {})
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:5]


def _store_chart(pygal: Any, axis: Axis, entries: dict[str, list[Entry]]) -> Chart:
    """What the store holds over time: each backup's stored size added up, as it ran."""
    every = sorted((e for found in entries.values() for e in found), key=lambda e: e.started)
    unit, factor = _size_unit([sum(_stored(e) for e in every)])
    chart = _chart(pygal, axis, "the store: total size of the backups held", f"size ({unit})")
    total, points = 0, []
    for entry in every:
        total += _stored(entry)
        if entry.started >= axis.start and entry.manifest.ok:
            points.append((entry.started, total / factor))
    _add(chart, "total held", points, marker=False)
    return _svg(chart)


# -- the page ---------------------------------------------------------------------------
def _render(page: Page, jinja2: Any) -> str:
    environment = jinja2.Environment(
        autoescape=True,
        finalize=_masked,  # every value the page shows, as the logs show it
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    template_text = resources.files("cosmic_backup").joinpath("templates/report.html.j2")
    template = environment.from_string(template_text.read_text(encoding="utf-8"))
    return str(template.render(page=page))


def _masked(value: Any) -> Any:
    """A shown value through `redact`; the SVG (already markup) keeps its markup."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return Markup(redact(str(value)))  # noqa: S704 - our own chart, masked
    return redact(value) if isinstance(value, str) else value
