"""Pure parts of the configuration component: the environment snapshot and the diffs."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cosmic_backup.components.config import (
    compare_env,
    compare_trees,
    decode_env_file,
    encode_env_file,
    environment_snapshot,
    format_env,
    parse_env,
)
from cosmic_backup.settings import DEFAULT_ENV_EXCLUDE


def test_snapshot_filters_shell_noise_and_the_key() -> None:
    environ = {
        "PATH": "/bin",
        "PWD": "/x",
        "LC_ALL": "C",
        "BACKUP_KEY": "k",
        "SECRET": "v",
        "DATABASE_URL": "postgres://u:p@h/d",
        "TERM_PROGRAM": "t",
    }
    snapshot = environment_snapshot(environ, ("*",), tuple(DEFAULT_ENV_EXCLUDE.split(",")))
    assert snapshot == {"DATABASE_URL": "postgres://u:p@h/d", "SECRET": "v"}


def test_snapshot_include_patterns() -> None:
    environ = {"APP_A": "1", "APP_B": "2", "OTHER": "3"}
    assert environment_snapshot(environ, ("APP_*",), ()) == {"APP_A": "1", "APP_B": "2"}


names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True)
values = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60)


@given(st.dictionaries(names, values, max_size=12))
def test_env_file_round_trips_any_value(environment: dict[str, str]) -> None:
    assert parse_env(format_env(environment)) == environment


# What the environment can hold: any name without "=" or NUL, any value without NUL, and
# bytes that are not UTF-8 (which Python hands over as lone surrogates).
any_names = st.text(
    st.characters(exclude_characters="=\x00", exclude_categories=("Cs",)), min_size=1, max_size=20
)
raw_values = st.binary(max_size=40).filter(lambda b: b"\x00" not in b)


@given(st.dictionaries(any_names, raw_values, max_size=8))
def test_env_file_round_trips_any_name_and_any_bytes(environment: dict[str, bytes]) -> None:
    as_python_sees_it = {
        name: value.decode("utf-8", "surrogateescape") for name, value in environment.items()
    }
    data = encode_env_file(format_env(as_python_sees_it))
    assert parse_env(decode_env_file(data)) == as_python_sees_it


def test_names_that_are_not_shell_identifiers_are_quoted_whole() -> None:
    environment = {"my-var": "1", "a b": "two words", "9LIVES": "x", "OK_NAME": "y z"}
    text = format_env(environment)
    assert "'a b=two words'" in text and "OK_NAME='y z'" in text
    assert parse_env(text) == environment


def test_a_name_that_is_not_utf8_is_shown_escaped() -> None:
    diff = compare_env({"caf\udce9": "1"}, {})
    assert diff["added"] == ["caf\\xe9"]


def test_compare_env_names_only() -> None:
    diff = compare_env({"A": "1", "B": "2", "C": "3"}, {"B": "2", "C": "changed", "D": "4"})
    assert diff == {"added": ["A"], "changed": ["C"], "removed": ["D"]}


def test_compare_trees(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    live = tmp_path / "live"
    (saved / "config").mkdir(parents=True)
    (live / "config").mkdir(parents=True)
    (saved / "config" / "same.yaml").write_text("x")
    (live / "config" / "same.yaml").write_text("x")
    (saved / "config" / "changed.yaml").write_text("old")
    (live / "config" / "changed.yaml").write_text("new")
    (saved / "config" / "gone.yaml").write_text("g")
    (live / "config" / "new.yaml").write_text("n")
    (saved / ".env").write_text("A=1\n")
    paths = [(live / "config", "config"), (live / ".env", ".env")]
    diff = compare_trees(saved, live, paths)
    assert diff == {
        "added": [".env", "config/gone.yaml"],
        "changed": ["config/changed.yaml"],
        "removed": ["config/new.yaml"],
    }
