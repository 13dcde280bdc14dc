"""Off-site tests use the single-file format (format 1): uploads of chunked backups are
refused until the store's off-site step lands (docs/format.md, "Off-site")."""

from __future__ import annotations

import pytest

from tests.conftest import Project, ProjectFactory

SINGLE_FILE = {"BACKUP_FORMAT": "single-file"}


@pytest.fixture
def project(project: Project) -> Project:
    project.env.update(SINGLE_FILE)
    return project


@pytest.fixture
def make_project(make_project: ProjectFactory) -> ProjectFactory:
    def make() -> Project:
        made = make_project()
        made.env.update(SINGLE_FILE)
        return made

    return make
