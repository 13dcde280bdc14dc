"""DATABASE_URL handling: Neon's pooled hosts, default modes, masking, failure sentences."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cosmic_backup.components.database import DatabaseComponent
from cosmic_backup.components.database.connection import explain
from cosmic_backup.components.database.url import parse_database_url
from cosmic_backup.errors import UsageError
from cosmic_backup.logs import get_logger
from cosmic_backup.redact import redact
from cosmic_backup.settings import load_settings

NEON_POOLED = (
    "postgresql://alex:AbC123dEf@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"
    "/dbname?sslmode=require"
)


def test_neon_pooled_host_is_switched_to_the_direct_host() -> None:
    target = parse_database_url(NEON_POOLED)
    assert target.is_neon
    assert target.host == "ep-cool-darkness-123456.us-east-2.aws.neon.tech"
    assert target.params["sslmode"] == "require"
    assert "switched from the pooled host" in target.notes[0]
    assert "AbC123dEf" not in target.conninfo() and "AbC123dEf" not in target.notes[0]


def test_neon_direct_host_and_other_hosts_are_left_alone() -> None:
    direct = parse_database_url(NEON_POOLED.replace("-pooler", ""))
    assert direct.is_neon and direct.notes == []
    plain = parse_database_url("postgresql://u:p@db-pooler.example.com/app")
    assert not plain.is_neon and plain.host == "db-pooler.example.com" and plain.notes == []


def component(tmp_path: Path, **environ: str) -> DatabaseComponent:
    return DatabaseComponent(load_settings(tmp_path, environ=environ), get_logger())


def test_neon_defaults_to_schema_only_unless_full_is_asked(tmp_path: Path) -> None:
    neon = parse_database_url(NEON_POOLED)
    assert component(tmp_path).mode_for(neon, None) == "schema-only"
    assert component(tmp_path).mode_for(neon, "full") == "full"  # --full
    assert component(tmp_path, BACKUP_NEON_FULL="1").mode_for(neon, None) == "full"
    assert component(tmp_path, BACKUP_NEON_FULL="1").mode_for(neon, "schema-only") == (
        "schema-only"
    )
    other = parse_database_url("postgresql://u:p@db.example.com/app")
    assert component(tmp_path).mode_for(other, None) == "full"
    assert component(tmp_path).mode_for(other, "schema-only") == "schema-only"


def test_the_password_is_registered_as_a_secret() -> None:
    parse_database_url("postgresql://u:Very-Secret-77@h/app")
    assert "Very-Secret-77" not in redact("error near Very-Secret-77 in a message")


def test_a_malformed_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a valid PostgreSQL connection URL"):
        parse_database_url("postgresql://u:p@h/db?bogus_option=1")


def test_tools_get_the_password_only_in_their_environment() -> None:
    target = parse_database_url("postgresql://u:pw-123@h:6543/app?sslmode=require")
    assert "pw-123" not in target.conninfo()
    assert "sslmode=require" in target.conninfo() and "port=6543" in target.conninfo()
    assert target.tool_environment(7) == {"PGPASSWORD": "pw-123", "PGCONNECT_TIMEOUT": "7"}


@pytest.mark.parametrize(
    ("server_says", "sentence"),
    [
        ('FATAL:  password authentication failed for user "u"', "Authentication failed"),
        ('FATAL:  database "x" does not exist', "does not exist"),
        ("FATAL:  no pg_hba.conf entry for host, no encryption", "requires SSL"),
        ("server does not support SSL, but SSL was required", "requires SSL"),
        ("timeout expired", "timed out after 5 s"),
        ('could not translate host name "h" to address', "cannot be resolved"),
        ("connection refused", "connection refused"),
        ('FATAL:  role "bob" does not exist', "Authentication failed"),
        ("received invalid response to SSL negotiation: H", "not a PostgreSQL server"),
        ("FATAL:  sorry, too many clients already", "no free connection slot"),
        ("FATAL:  remaining connection slots are reserved", "no free connection slot"),
        ("connect: No route to host", "unreachable from here"),
    ],
)
def test_each_connection_failure_has_its_sentence(server_says: str, sentence: str) -> None:
    target = parse_database_url("postgresql://u:p@h/x")
    error = explain(psycopg.OperationalError(server_says), target, 5)
    assert sentence in error.message


def test_names_in_the_message_do_not_steer_the_diagnosis() -> None:
    """libpq quotes host and database names; "ssl-db" is a host, not an SSL problem."""
    target = parse_database_url("postgresql://u:p@ssl-db.example.com/timeout_db")
    refused = psycopg.OperationalError(
        'connection to server at "ssl-db.example.com" (10.0.0.5), port 5432 failed: '
        "Connection refused"
    )
    assert "connection refused" in explain(refused, target, 5).message
    missing = psycopg.OperationalError('FATAL:  database "timeout_db" does not exist')
    error = explain(missing, target, 5)
    assert error.message.startswith("The database timeout_db does not exist") and error.permanent


def test_neon_pooler_switch_covers_every_host_of_a_multi_host_url() -> None:
    target = parse_database_url(
        "postgresql://u:p@ep-a-1-pooler.eu-central-1.aws.neon.tech,"
        "ep-b-2-pooler.eu-central-1.aws.neon.tech/app"
    )
    assert target.host == ("ep-a-1.eu-central-1.aws.neon.tech,ep-b-2.eu-central-1.aws.neon.tech")
    assert len(target.notes) == 1


# Every URL delimiter, and space; each password also has pieces long enough to spot.
DELIMITERS = [*"@:/?#%[]!$&'()*+,;=", " "]


def _pieces(password: str) -> list[str]:
    """The runs of letters and digits of a password: no output may hold any of them."""
    import re

    return [piece for piece in re.split(r"[^A-Za-z0-9]+", password) if len(piece) >= 4]


@pytest.mark.parametrize("delimiter", DELIMITERS)
def test_no_fragment_of_an_unencoded_password_reaches_a_message(delimiter: str) -> None:
    password = f"Kq7vWx{delimiter}Zr2pLm{delimiter}Ht9yQe"
    url = f"postgresql://app:{password}@127.0.0.1:1/appdb"
    try:
        target = parse_database_url(url)
    except UsageError as exc:
        shown = exc.message
    else:  # sub-delimiters may stand unencoded: then the whole password is the password
        assert target.password == password
        shown = explain(psycopg.OperationalError("connection refused"), target, 5).message
        shown += target.describe() + target.conninfo()
    for piece in _pieces(password):
        assert piece not in shown
    assert "127.0.0.1" in shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:p@ss:w/rd#1%x@127.0.0.1/db",  # the first example
        "postgresql://app:hunter@2xyz@127.0.0.1/db",  # and its second
        "postgresql://app:two words here@127.0.0.1/db",
        "postgresql://app:Pw0rd/Slash@127.0.0.1/db",
    ],
)
def test_an_unencoded_password_is_refused_with_the_url_masked(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_database_url(url)
    message = caught.value.message
    assert "postgresql://app:***@127.0.0.1/db" in message and "percent-encode" in message
    password = url.split("app:", 1)[1].rsplit("@", 1)[0]
    assert all(
        piece not in message for piece in password.replace("@", " ").split() if len(piece) > 1
    )
    assert redact(f"pg_dump said {password}") == "pg_dump said ***"  # registered as a secret


def test_a_percent_encoded_password_with_every_delimiter_is_decoded() -> None:
    import urllib.parse

    password = "".join(f"x{d}" for d in DELIMITERS) + "end"
    url = f"postgresql://app:{urllib.parse.quote(password, safe='')}@127.0.0.1/db"
    target = parse_database_url(url)
    assert target.password == password and target.host == "127.0.0.1"


def test_a_malformed_conninfo_with_a_password_does_not_echo_it() -> None:
    with pytest.raises(UsageError) as caught:
        parse_database_url("host=h password=Secret Tail99 user=app")
    assert "Tail99" not in caught.value.message and "Secret" not in caught.value.message


def test_the_host_and_user_from_the_environment_describe_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq takes PGHOST, PGPORT, PGUSER and PGDATABASE when the URL has none."""
    monkeypatch.setenv("PGHOST", "db.internal")
    monkeypatch.setenv("PGPORT", "6432")
    monkeypatch.setenv("PGUSER", "svc")
    target = parse_database_url("postgresql:///appdb")
    assert target.host == "db.internal"
    assert target.describe() == "database appdb on db.internal:6432 as svc"
    assert parse_database_url("postgresql://other/appdb").host == "other"  # the URL wins


def test_an_into_url_is_named_as_such(tmp_path: Path) -> None:
    """restore --into parses its URL like DATABASE_URL, and the sentence names it."""
    with pytest.raises(UsageError, match="the --into URL") as caught:
        component(tmp_path)._target("postgresql://app:Zx9q/Wv8k@127.0.0.1/db")
    assert "Zx9q" not in caught.value.message and "Wv8k" not in caught.value.message
