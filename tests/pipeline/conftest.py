"""Fixtures of the pipeline tests."""

import pytest

from .project_copy import gemctl, make_project


@pytest.fixture(scope="module")
def built_project(tmp_path_factory):
    """A project in which the `ci` recipe has run through all four stages."""
    project = make_project(tmp_path_factory.mktemp("project"))
    r = gemctl(project, "run", "--recipe", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    return project, r
