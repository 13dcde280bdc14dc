"""Settings: defaults < cosmic-backup.toml < environment < flags, where each value came
from, the key kept out of the file, secrets masked, and one sentence for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmic_backup.errors import UsageError
from cosmic_backup.settings import (
    CONFIG_FILE_NAME,
    MIN_KDF_ITERATIONS,
    SPECS,
    check_offsite_environment,
    load_settings,
)

SECRET = "hunter2-very-secret"


def write_toml(root: Path, text: str) -> None:
    (root / CONFIG_FILE_NAME).write_text(text)


def test_each_layer_overrides_the_one_below_and_says_so(tmp_path: Path) -> None:
    defaults = load_settings(tmp_path, environ={})
    assert (defaults.retention_days, defaults.sources["retention_days"]) == (30, "default")

    write_toml(tmp_path, "retention_days = 10\nfiles_dirs = ['media', 'public']\n")
    from_file = load_settings(tmp_path, environ={})
    assert (from_file.retention_days, from_file.sources["retention_days"]) == (10, CONFIG_FILE_NAME)
    assert from_file.files_dirs == ("media", "public")

    environ = {"RETENTION_DAYS": "20", "BACKUP_FILES_DIRS": "uploads, static"}
    from_env = load_settings(tmp_path, environ=environ)
    assert (from_env.retention_days, from_env.sources["retention_days"]) == (
        20,
        "environment RETENTION_DAYS",
    )
    assert from_env.files_dirs == ("uploads", "static")

    flags = {"retention_days": 40, "files_dirs": None}  # a flag not given is None
    from_flags = load_settings(tmp_path, environ=environ, flags=flags)
    assert (from_flags.retention_days, from_flags.sources["retention_days"]) == (
        40,
        "command line",
    )
    assert from_flags.sources["files_dirs"] == "environment BACKUP_FILES_DIRS"
    assert from_flags.sources["log_dir"] == "default"
    assert set(from_flags.sources) == {spec.name for spec in SPECS}


def test_an_empty_environment_variable_does_not_override(tmp_path: Path) -> None:
    write_toml(tmp_path, "retention_days = 10\n")
    settings = load_settings(tmp_path, environ={"RETENTION_DAYS": ""})
    assert (settings.retention_days, settings.sources["retention_days"]) == (10, CONFIG_FILE_NAME)


def test_overrides_after_loading_record_their_source(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={}).with_overrides(
        {"log_format": "JSON"}, "--log-format"
    )
    assert (settings.log_format, settings.sources["log_format"]) == ("json", "--log-format")


def test_paths_resolve_against_the_project_root(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"BACKUP_LOG_DIR": "/var/log/app"})
    assert settings.path("backup_dir") == tmp_path.resolve() / "tmp" / "backups"
    assert settings.path("key_file") == tmp_path.resolve() / ".backup_key"
    assert settings.path("log_dir") == Path("/var/log/app")
    assert settings.optional_path("remote") is None


@pytest.mark.parametrize("name", ["key", "BACKUP_KEY"])
def test_the_key_is_refused_in_the_settings_file_without_echoing_it(
    tmp_path: Path, name: str
) -> None:
    write_toml(tmp_path, f'{name} = "{SECRET}"\n')
    with pytest.raises(UsageError) as refused:
        load_settings(tmp_path, environ={})
    assert f"has unknown settings: {name}." in refused.value.message
    assert SECRET not in refused.value.message


def test_secrets_are_masked_when_shown(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path,
        environ={
            "DATABASE_URL": f"postgresql://app:{SECRET}@db.internal:5432/app?sslmode=require",
            "BACKUP_KEY": SECRET,
            "BACKUP_NOTIFY_URL": f"https://hooks.example.com/services/{SECRET}",
        },
    )
    assert settings.key == SECRET  # the value itself is there to be used...
    shown = {spec.name: settings.shown(spec.name) for spec in SPECS}
    assert not any(SECRET in text for text in shown.values())  # ...never to be shown
    assert shown["database_url"] == "postgresql://app:***@db.internal:5432/app?sslmode=require"
    assert shown["key"] == shown["notify_url"] == "********"
    assert shown["remote"] == "(not set)"
    assert shown["files_dirs"] == "static,uploads"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BACKUP_KDF_ITERATIONS": "1000"}, f"is 1000; it must be at least {MIN_KDF_ITERATIONS}"),
        ({"RETENTION_DAYS": "soon"}, "retention_days from environment RETENTION_DAYS is invalid"),
        ({"RETENTION_DAYS": "0"}, "must be at least 1"),
        ({"BACKUP_KEEP_DAILY": "-1"}, "must be at least 0 and at most 36500 \\(0 turns it off\\)"),
        ({"RETENTION_DAYS": "99999999999999999999"}, "it must be at least 1 and at most 36500"),
        ({"BACKUP_CONNECT_RETRIES": "-2"}, "connect_retries .* is -2; it must be at least 1"),
        ({"BACKUP_STATUS_GRACE_HOURS": "-1"}, "status_grace_hours .* must be at least 0"),
        ({"BACKUP_TIMEOUT": "99999999999999999999"}, "timeout .* at most 604800"),
        ({"BACKUP_LOG_FORMAT": "xml"}, "'xml' is not one of text, json"),
        ({"BACKUP_ALLOW_INSECURE_KEY": "perhaps"}, "'perhaps' is not true or false"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_setting_and_source(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        load_settings(tmp_path, environ=environ)


def test_a_broken_settings_file_is_named(tmp_path: Path) -> None:
    write_toml(tmp_path, "retention_days = \n")
    with pytest.raises(UsageError, match=f"{CONFIG_FILE_NAME} is not valid TOML"):
        load_settings(tmp_path, environ={})


def test_every_whole_number_setting_has_its_range(tmp_path: Path) -> None:
    """Each whole-number setting is declared with its bounds: none can be left unbounded."""
    numeric = {
        spec.name
        for spec in SPECS
        if isinstance(spec.default, int) and not isinstance(spec.default, bool)
    }
    bounded = {spec.name: spec.bounds for spec in SPECS if spec.bounds is not None}
    assert numeric == set(bounded)
    defaults = load_settings(tmp_path, environ={})
    for name, (low, high) in bounded.items():
        assert low <= getattr(defaults, name) <= high


def test_settings_are_typed_attributes_and_unknown_names_are_errors(tmp_path: Path) -> None:
    """No __getattr__ fallback: a misspelt setting is an AttributeError, not a silent Any."""
    settings = load_settings(tmp_path, environ={"RETENTION_DAYS": "12", "BACKUP_WAIT": "yes"})
    assert settings.retention_days == 12 and settings.wait is True
    assert settings.files_dirs == ("static", "uploads")
    assert {spec.name for spec in SPECS} == set(settings.values)
    with pytest.raises(AttributeError):
        _ = settings.retention_dayz  # type: ignore[attr-defined]
    changed = settings.with_overrides({"retention_days": "3"}, "command line")
    assert changed.retention_days == 3 and changed.sources["retention_days"] == "command line"
    assert settings.retention_days == 12


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AWS_ENDPOINT_URL", "minio.internal:9000"),
        ("AWS_ENDPOINT_URL", "ftp://minio.internal"),
        ("AWS_MAX_ATTEMPTS", "five"),
        ("AWS_MAX_ATTEMPTS", "0"),
        ("AWS_S3_ADDRESSING_STYLE", "paths"),
    ],
)
def test_a_bad_aws_setting_is_one_sentence_naming_it(name: str, value: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_offsite_environment({name: value})
    assert caught.value.message.startswith(f"The setting {name} ")


def test_good_aws_settings_pass_and_a_url_s_password_is_never_echoed() -> None:
    check_offsite_environment(
        {
            "AWS_ENDPOINT_URL": "https://minio.internal:9000",
            "AWS_MAX_ATTEMPTS": "5",
            "AWS_S3_ADDRESSING_STYLE": "virtual",
        }
    )
    with pytest.raises(UsageError) as caught:
        check_offsite_environment({"AWS_ENDPOINT_URL": "user:hunter2@minio"})
    assert "hunter2" not in caught.value.message


def test_backups_are_chunked_by_default_also_when_they_go_off_site(
    tmp_path: Path,
) -> None:
    """Chunked backups go off-site too, so BACKUP_REMOTE no longer changes the default;
    an explicit choice wins either way."""
    assert load_settings(tmp_path, {}).backup_format == "chunked"
    remote = {"BACKUP_REMOTE": "s3://bucket/app"}
    with_remote = load_settings(tmp_path, remote)
    assert with_remote.backup_format == "chunked"
    assert with_remote.sources["backup_format"] == "default"
    chosen = load_settings(tmp_path, {**remote, "BACKUP_FORMAT": "single-file"})
    assert chosen.backup_format == "single-file"
