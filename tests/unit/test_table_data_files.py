"""Naming a directory dump's data files from its table of contents, at scale."""

from __future__ import annotations

import time

from cosmic_backup.components.database.directory_dump import table_data_files

MANY_TABLES = 20_000
BOUND_SECONDS = 2.0  # the quadratic scan took minutes here; the linear one a few tens of ms


def synthetic_listing(tables: list[tuple[str, str]]) -> str:
    """What ``pg_restore --list`` prints for a dump of `tables`: each one's TABLE entry,
    then each one's TABLE DATA entry, as pg_dump orders them."""
    head = [";", "; Archive created at 2026-12-03 05:40:00 UTC", ";"]
    schema_lines = [
        f"{300 + i}; 1259 {16400 + i} TABLE {s} {t} app" for i, (s, t) in enumerate(tables)
    ]
    data_lines = [
        f"{30000 + i}; 0 {16400 + i} TABLE DATA {s} {t} app" for i, (s, t) in enumerate(tables)
    ]
    return "\n".join([*head, *schema_lines, *data_lines])


def test_the_data_files_of_twenty_thousand_tables_are_named_in_well_under_two_seconds() -> None:
    tables = [(f"tenant_{i % 7}", f"events_{i}") for i in range(MANY_TABLES)]
    tables += [("a b", "c"), ("a", "b c")]  # both read "a b c": neither may be named
    listing = synthetic_listing(tables)
    began = time.perf_counter()
    named = table_data_files(listing, tables)
    took = time.perf_counter() - began
    assert took < BOUND_SECONDS, f"{took:.1f} s for {MANY_TABLES} tables"
    assert len(named) == MANY_TABLES
    assert named["30000.dat"] == "tenant_0.events_0"
    assert named[f"{30000 + MANY_TABLES - 1}.dat"] == f"tenant_{(MANY_TABLES - 1) % 7}.events_19999"
    assert not {"a b.c", "a.b c"} & set(named.values())
