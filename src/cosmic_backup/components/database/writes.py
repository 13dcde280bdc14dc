"""Writes the app commits after the pre-restore backup began: in no backup, and counted.

The pre-restore backup is a snapshot; the restore replaces the database later. What the
app commits in between is in neither (issue 18 item 8). cosmic-backup does not lock the
app out for that time: refusing its connections needs ALTER DATABASE or ALTER ROLE, which
managed servers (Neon, RDS) often do not grant, it must also end the app's sessions, and a
run killed in between would leave the app locked out with no one to let it back in. So
the plan says, before the operator confirms, that such writes will be lost (stop the
app's writes first to lose none), and the report says how many there were.

How they are counted, without waiting on the server's statistics (a busy backend
reports its counts at most once a second, and one blocked by the restore's locks not
until it is free):

- **One-transaction restore**: transaction ids. A mark taken just before the pre-restore
  backup begins holds the next transaction id and those in progress; after the restore,
  every id from those up to the next one then that committed (``txid_status``) is a write
  transaction committed after the mark. The restore's own is taken off. Ids are the
  server's, not the database's: writes to other databases of the server count too, and
  so do those committed in the instant after the restore; the number is an upper bound.
  Every write lost is in it: it committed after the backup's snapshot, so after the mark,
  and before the restore took its locks.
- **--jobs**: the old database's own statistics (``pg_stat_database``: rows inserted,
  updated and deleted), read after the swap and before it is dropped. No session is
  connected to it then (the swap needs that), so every session's counts are in.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# Beyond this many ids, the count is not made id by id (it would take seconds).
MAX_COUNTED_IDS = 5_000_000

MARK_QUERY = """
SELECT txid_snapshot_xmax(s), ARRAY(SELECT txid_snapshot_xip(s)),
       (SELECT oid::bigint FROM pg_catalog.pg_database WHERE datname = %s),
       (SELECT tup_inserted + tup_updated + tup_deleted FROM pg_catalog.pg_stat_database
        WHERE datname = %s)
FROM txid_current_snapshot() s
"""
COMMITTED_QUERY = """
SELECT count(*) FROM (
  SELECT unnest(%(in_progress)s::bigint[]) AS x
  UNION
  SELECT generate_series(%(low)s::bigint, txid_snapshot_xmax(txid_current_snapshot()) - 1)
) ids WHERE txid_status(ids.x) = 'committed'
"""
SPAN_QUERY = "SELECT txid_snapshot_xmax(txid_current_snapshot()) - %s"
ROW_CHANGES_QUERY = """
SELECT tup_inserted + tup_updated + tup_deleted FROM pg_catalog.pg_stat_database
WHERE datid = %s
"""

BEFORE_NOTE = (
    "What the app writes after the pre-restore backup begins is in no backup: the restore "
    "replaces it. Stop the app's writes first to lose none; the report counts them."
)


@dataclass(frozen=True)
class WritesMark:
    next_id: int  # the next transaction id when the pre-restore backup began
    in_progress: tuple[int, ...]  # the ids then in progress
    database_oid: int | None
    row_changes: int | None  # the database's rows inserted, updated and deleted by then


def mark_writes(conn: psycopg.Connection, dbname: str) -> WritesMark:
    row = conn.execute(MARK_QUERY, [dbname, dbname]).fetchone()
    assert row is not None
    next_id, in_progress, oid, changes = row
    return WritesMark(int(next_id), tuple(in_progress or ()), oid, changes)


def committed_since(conn: psycopg.Connection, mark: WritesMark) -> int | None:
    """Write transactions committed on the server since `mark`; None when too many ids
    were used to count them one by one."""
    span = conn.execute(SPAN_QUERY, [mark.next_id]).fetchone()
    if span is None or int(span[0]) > MAX_COUNTED_IDS:
        return None
    params = {"in_progress": list(mark.in_progress), "low": mark.next_id}
    row = conn.execute(COMMITTED_QUERY, params).fetchone()
    return int(row[0]) if row else 0


def one_transaction_note(conn: psycopg.Connection, mark: WritesMark) -> str:
    """After a one-transaction restore (its own commit among those counted)."""
    committed = committed_since(conn, mark)
    if committed is None:
        return (
            f"More than {MAX_COUNTED_IDS} transaction ids were used on this server after "
            "the pre-restore backup began: writes the app committed then are in no backup."
        )
    lost = max(committed - 1, 0)  # the restore's own transaction
    if lost == 0:
        return "No write was committed after the pre-restore backup began: none was lost."
    return (
        f"{lost} write transaction(s) committed on this server after the pre-restore "
        "backup began and before the restore took its locks are in neither the "
        "pre-restore backup nor the restored database (at most: writes to other "
        "databases of this server count too)."
    )


def swapped_note(conn: psycopg.Connection, mark: WritesMark, old: str, *, kept: bool) -> str | None:
    """After a --jobs swap, before the old database (`old`, the same oid) is dropped."""
    if mark.database_oid is None or mark.row_changes is None:
        return None
    row = conn.execute(ROW_CHANGES_QUERY, [mark.database_oid]).fetchone()
    if row is None or row[0] is None:
        return None
    lost = max(int(row[0]) - int(mark.row_changes), 0)
    if lost == 0:
        return "No row was written after the pre-restore backup began: none was lost."
    where = f"still in {old} (--keep-old)" if kept else f"they were only in {old}"
    return (
        f"{lost} row(s) were inserted, updated or deleted in the database after the "
        "pre-restore backup began and before the swap; they are in neither the "
        f"pre-restore backup nor the restored database ({where})."
    )
