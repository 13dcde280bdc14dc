"""Where restore tests restore, and what they check there.

The sandbox: a private folder (removed after, or by the next run if this one is killed)
and, when a database backup is tested, a throwaway PostgreSQL server started on first
use and shared by the run, or a uniquely named database on the ``--into`` server.

The checks: a database dump is restored through the component's own restore (row counts
compared by it), then the objects present are compared with the dump's table of
contents; an archive is extracted through its component's own restore, then every
member's size, mode and SHA-256 is compared with the archive, and the count with the
manifest.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cosmic_backup.components import create_component
from cosmic_backup.components.base import RestoreRequest
from cosmic_backup.errors import IntegrityError, OperationFailed
from cosmic_backup.format.manifest import Manifest
from cosmic_backup.format.pipeline import CHUNK_SIZE
from cosmic_backup.operations.context import Runtime

if TYPE_CHECKING:
    from cosmic_backup.components.database.throwaway import ThrowawayServer


class Sandbox:
    def __init__(self, rt: Runtime, folder: Path, into: str | None, stack: contextlib.ExitStack):
        self.rt, self.folder, self.into, self._stack = rt, folder, into, stack
        self._server: ThrowawayServer | None = None

    @classmethod
    @contextlib.contextmanager
    def create(cls, rt: Runtime, into: str | None) -> Iterator[Sandbox]:
        from cosmic_backup.components.database.throwaway import private_folder

        folder = private_folder("files-")  # 0700; removed by the next run if this one is killed
        try:
            with contextlib.ExitStack() as stack:
                yield cls(rt, folder, into, stack)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def server(self, min_major: int) -> ThrowawayServer:
        from cosmic_backup.components.database.throwaway import throwaway_server

        if self._server is None:
            self.rt.say("Starting a throwaway PostgreSQL server for the restore test...")
            self._server = self._stack.enter_context(
                throwaway_server(min_major=min_major, configured=self.rt.settings.pg_bin_dir)
            )
        return self._server

    def provide_roles(self, roles: set[str]) -> None:
        """Create `roles` (without login) on the throwaway server, that the dump's policies
        name: it is ours and thrown away. A server of --into is the operator's: untouched."""
        if self.into is not None or self._server is None or not roles:
            return
        from psycopg import sql

        with self._server.admin() as conn:
            have = {row[0] for row in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
            for role in sorted(roles - have):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        self.rt.log.info("created on the throwaway server the roles policies name: %s", roles)

    @contextlib.contextmanager
    def database(self, manifest: Manifest) -> Iterator[str]:
        """The URL of a new, empty database for `manifest`'s dump; dropped afterwards."""
        if self.into is not None:
            with _database_on(self.into, self.rt.settings.connect_timeout) as url:
                yield url
            return
        import psycopg

        server = self.server(_major(manifest.source.get("server_version")))
        name = server.create_database("restore_test")
        try:
            yield server.url(name)
        finally:
            with contextlib.suppress(psycopg.Error):
                server.drop_database(name)


@contextlib.contextmanager
def _database_on(into: str, timeout: int) -> Iterator[str]:
    """A uniquely named database on the --into server; never an existing one."""
    import secrets

    import psycopg
    from psycopg import sql

    from cosmic_backup.components.database.connection import connect
    from cosmic_backup.components.database.url import parse_database_url

    target = parse_database_url(into, "the --into URL")
    name = f"cosmic_restore_test_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    try:
        with connect(target, timeout, autocommit=True) as conn:
            conn.execute(create)
    except psycopg.Error as exc:
        raise OperationFailed(
            f"No database for the restore test could be created on {target.describe()} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
            "the --into URL's user needs CREATEDB."
        ) from None
    url = psycopg.conninfo.make_conninfo(**{**target.params, "dbname": name})
    try:
        yield url
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with contextlib.suppress(psycopg.Error), connect(target, timeout, autocommit=True) as conn:
            conn.execute(drop)


def _major(version: object) -> int:
    text = str(version or "0").split(".")[0]
    return int(text) if text.isdigit() else 0


# -- the checks ----------------------------------------------------------------------------
def restore_database_and_compare(
    rt: Runtime, payload: BinaryIO, manifest: Manifest, sandbox: Sandbox
) -> dict[str, Any]:
    import psycopg

    from cosmic_backup.components.database.directory_dump import DirectoryTocTee
    from cosmic_backup.components.database.objects import TocTee, missing_objects, parse_toc
    from cosmic_backup.components.database.source import DatabaseSource
    from cosmic_backup.components.database.tools import find_tool
    from cosmic_backup.components.database.unschemed import policy_roles, read_head
    from cosmic_backup.components.database.url import parse_database_url

    component = create_component("database", rt.settings, rt.log)
    # A directory-format dump is a tar whose first member is its table of contents.
    tee_type = DirectoryTocTee if DatabaseSource.of(manifest).is_directory else TocTee
    pg_restore = find_tool(
        "pg_restore", _major(manifest.source.get("pg_dump_version")), rt.settings.pg_bin_dir
    )
    with sandbox.database(manifest) as url:
        if tee_type is TocTee and sandbox.into is None:
            payload, head = read_head(payload)  # its policies name roles a throwaway lacks
            sandbox.provide_roles(policy_roles(head) if head else set())
        # Without the GRANTs: they name the app's roles, which a throwaway server does
        # not have, and privileges are not what a restore test proves.
        request = RestoreRequest(target=url, safety_backup=False, no_privileges=True)
        plan = component.plan_restore(manifest, request)
        with tee_type(payload, pg_restore, rt.settings.timeout, rt.log) as tee:
            teed = io.BufferedReader(tee, CHUNK_SIZE)  # kept: collecting it would close tee
            try:
                component.consume(teed, manifest, plan)
            except OperationFailed as exc:
                advised = with_extension_advice(exc, sandbox.into is None)
                raise with_role_advice(advised, sandbox.into is None) from None
            listed = parse_toc(tee.listing())
        target = parse_database_url(url, "the restore test's database")
        try:
            missing = missing_objects(target, listed, rt.settings.connect_timeout)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OperationFailed(
                f"The restored database {target.describe()} could not be inspected ({first}); "
                "the restore test is incomplete: run it again."
            ) from None
    if missing:
        shown = ", ".join(str(item) for item in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise IntegrityError(
            f"The restore test of {manifest.id} restored the dump, but {len(missing)} "
            f"object(s) its table of contents lists are missing afterwards: {shown}{more}; "
            "do not rely on this backup: take a new one and check the database's definitions."
        )
    counts: dict[str, int] = manifest.source.get("row_counts", {})
    return {
        "tables": len(manifest.source.get("tables", [])),
        "rows": sum(counts.values()),
        "objects": len(listed),
        "bytes": manifest.plaintext_size,
    }


def with_extension_advice(exc: OperationFailed, throwaway: bool) -> OperationFailed:
    """An extension the dump needs that the throwaway server lacks (PostGIS...): say how
    to test on a server that has it."""
    text = exc.message
    lacking = "extension" in text and ("not available" in text or "control file" in text)
    if not (throwaway and lacking):
        return exc
    return OperationFailed(
        f"{text.rstrip('.')}. The throwaway server lacks an extension the backup uses: "
        "install it for that server, or test on a server that has it with --into URL."
    )


def with_role_advice(exc: OperationFailed, throwaway: bool) -> OperationFailed:
    """A role the dump names beyond its GRANTs that the throwaway server still lacks (the
    roles of policies are created there; others, such as a user mapping's, are not): the
    advice to create it "on this server" would name a server that is thrown away."""
    text = exc.message
    if not (throwaway and 'role "' in text and "does not exist" in text):
        return exc
    sentence = text.split(". Create that role on this server")[0].rstrip(".")
    return OperationFailed(
        f"{sentence}. The backup names that role beyond its GRANTs and the throwaway "
        "server does not have it: test on a server that has the role with --into URL."
    )


def extract_archive_and_compare(
    rt: Runtime, payload: BinaryIO, manifest: Manifest, sandbox: Sandbox
) -> dict[str, Any]:
    from cosmic_backup.components.archive_check import ArchiveDigests, compare_with_disk
    from cosmic_backup.components.config import ENV_MEMBER

    component = create_component(manifest.component, rt.settings, rt.log)
    folder = sandbox.folder / manifest.id
    plan = component.plan_restore(manifest, RestoreRequest(target=str(folder)))
    digests = ArchiveDigests(payload)
    try:
        with digests:
            teed = io.BufferedReader(digests, CHUNK_SIZE)  # kept: collecting it closes it
            component.consume(teed, manifest, plan)
            members = digests.finish()
        problems = compare_with_disk(members, folder)
        files = sum(1 for name, m in members if m.kind == "file" and name != ENV_MEMBER)
        size = sum(m.size for name, m in members if m.kind == "file" and name != ENV_MEMBER)
        links = members.by_kind.get("link", 0)
    finally:
        digests.discard()
        shutil.rmtree(folder, ignore_errors=True)
    expected = manifest.source.get("files")
    if expected is not None and expected != files:
        problems.append(f"{files} file(s) in the archive, the manifest says {expected}")
    if problems:
        shown = "; ".join(problems[:10]) + ("; and more" if len(problems) > 10 else "")
        raise IntegrityError(
            f"The restore test of {manifest.id} extracted the archive, but what is on disk "
            f"differs from it: {shown}; do not rely on this backup: take a new one."
        )
    return {"files": files, "links": links, "bytes": size}
