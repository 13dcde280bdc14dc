"""Most off-site tests pin the single-file format (format 1): they read, rename or damage
artifacts in the bucket. Chunked backups off-site (format 2, the default) have their own
tests, which ask for it: test_offsite_chunked.py."""

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
