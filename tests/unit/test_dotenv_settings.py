"""The app's .env as a settings source: below cosmic-backup.toml and the environment,
never the key, common dotenv syntax, and one sentence for a line of ours it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmic_backup.errors import UsageError
from cosmic_backup.settings import CONFIG_FILE_NAME, load_settings

URL = "postgresql://app:pw@db.example.com/app"


def test_dotenv_supplies_what_neither_the_environment_nor_the_toml_sets(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# the app's own settings\n"
        "SECRET_KEY=abc\n"
        f'export DATABASE_URL="{URL.replace("pw", "${DB_PASSWORD}")}"  # from the vault\n'
        "RETENTION_DAYS=9 # nine days\n"
        "APP_VERSION='v1 #2'\n"
        "BACKUP_KEY=never-from-a-file\n"
        'UNRELATED="an unclosed quote the app may accept\n'
    )
    settings = load_settings(tmp_path, environ={"DB_PASSWORD": "pw"})
    assert settings.database_url == URL
    assert settings.sources["database_url"] == ".env DATABASE_URL"
    assert settings.retention_days == 9 and settings.app_version == "v1 #2"
    assert settings.key is None  # the key never comes from a file the backups contain
    (tmp_path / CONFIG_FILE_NAME).write_text("retention_days = 12\n")
    layered = load_settings(tmp_path, environ={"DATABASE_URL": "postgresql://h/other"})
    assert layered.retention_days == 12 and layered.sources["retention_days"] == CONFIG_FILE_NAME
    assert layered.database_url == "postgresql://h/other"
    assert layered.sources["database_url"] == "environment DATABASE_URL"


def test_a_broken_line_of_ours_in_dotenv_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("A=1\nDATABASE_URL='postgresql://h/db\n")
    with pytest.raises(UsageError, match=r"Line 2 of .*\.env \(DATABASE_URL\) has no closing"):
        load_settings(tmp_path, environ={})
    (tmp_path / ".env").write_text("RETENTION_DAYS=soon\n")
    with pytest.raises(UsageError, match=r"retention_days from \.env RETENTION_DAYS is invalid"):
        load_settings(tmp_path, environ={})
