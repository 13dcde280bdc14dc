"""The whole-app drill's warning when the backups tested together are far apart, and the
table of contents parsing the database restore test relies on."""

from __future__ import annotations

from datetime import timedelta

from cosmic_backup.clock import iso
from cosmic_backup.components.database.objects import DbObject, parse_toc
from cosmic_backup.operations.restore_test import RestoreTestResult, far_apart
from cosmic_backup.states import Outcome
from tests.unit.operations.helpers import NOW


def result_of(component: str, days_old: float, status: Outcome = Outcome.OK) -> RestoreTestResult:
    started = iso(NOW - timedelta(days=days_old))
    return RestoreTestResult(component, status, id=f"{component}-x", backup_started_at=started)


def test_a_files_backup_days_older_than_the_database_backup_is_warned_about() -> None:
    warnings = far_apart(
        [result_of("database", 0.1), result_of("files", 6.1), result_of("config", 0.5)]
    )
    assert warnings == [
        "the files backup is 6 days older than the database backup: uploads added since "
        "then are missing from it"
    ]


def test_backups_of_the_same_day_or_untested_ones_are_not_warned_about() -> None:
    assert far_apart([result_of("database", 0), result_of("files", 0.9)]) == []
    assert far_apart([result_of("database", 0), result_of("files", 9, Outcome.FAILED)]) == []
    assert far_apart([result_of("database", 0)]) == []


# pg_restore --list prints an extension's empty owner as a trailing blank.
LISTING = (
    ";\n"
    "; Archive created at 2026-11-29 10:00:00 UTC\n"
    "2; 3079 16385 EXTENSION - citext \n"
    "3570; 0 0 COMMENT - EXTENSION citext \n"
    "270; 1255 16620 FUNCTION public add(integer, text) postgres\n"
    "227; 1259 16587 TABLE audit events postgres\n"
    "3556; 0 16590 TABLE DATA audit events_2025 postgres\n"
    "3377; 0 0 TABLE ATTACH audit events_2025 postgres\n"
    "234; 1259 16622 TABLE public odd name postgres\n"
    "225; 1259 16577 SEQUENCE audit log_id_seq postgres\n"
    "3572; 0 0 SEQUENCE OWNED BY audit log_id_seq postgres\n"
    "3575; 0 0 SEQUENCE SET audit log_id_seq postgres\n"
    "233; 1259 16616 MATERIALIZED VIEW billing top_users postgres\n"
    "3560; 0 16616 MATERIALIZED VIEW DATA billing top_users postgres\n"
    "230; 1259 16602 VIEW billing totals postgres\n"
    "3398; 2606 16586 CONSTRAINT audit log log_pkey postgres\n"
    "3390; 1259 16621 INDEX public users_mood_idx postgres\n"
    "3401; 2606 16558 FK CONSTRAINT billing invoices invoices_user_id_fkey postgres\n"
    "3403; 2620 16601 TRIGGER billing invoices invoices_audit postgres\n"
)


def test_the_table_of_contents_names_objects_as_the_catalog_does() -> None:
    assert parse_toc(LISTING) == {
        DbObject("EXTENSION", "-", "citext"),
        DbObject("FUNCTION", "public", "add(integer, text)"),
        DbObject("TABLE", "audit", "events"),
        DbObject("TABLE", "public", "odd name"),
        DbObject("SEQUENCE", "audit", "log_id_seq"),
        DbObject("MATERIALIZED VIEW", "billing", "top_users"),
        DbObject("VIEW", "billing", "totals"),
        DbObject("CONSTRAINT", "audit", "log log_pkey"),
        DbObject("INDEX", "public", "users_mood_idx"),
        DbObject("FK CONSTRAINT", "billing", "invoices invoices_user_id_fkey"),
    }
    assert str(DbObject("INDEX", "public", "users_mood_idx")) == "index public.users_mood_idx"


def test_an_extension_the_throwaway_server_lacks_points_to_into() -> None:
    from cosmic_backup.errors import OperationFailed
    from cosmic_backup.operations.restore_sandbox import with_extension_advice

    lacking = OperationFailed(
        "The restore failed and was rolled back; the database is unchanged. psql: ERROR:  "
        'extension "postgis" is not available.'
    )
    advised = with_extension_advice(lacking, throwaway=True)
    assert "with --into URL" in advised.message and 'extension "postgis"' in advised.message
    assert with_extension_advice(lacking, throwaway=False) is lacking  # --into: as it is
