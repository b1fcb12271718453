import pytest

from gemctl.project import Project
from tests.pipeline.project_copy import make_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh tiny project, the working directory of the test."""
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return Project(root)
