"""Pytest fixtures; the shared helpers are in :mod:`tests.helpers`."""
from __future__ import annotations

import pytest

from tests.helpers import compose_cfg


@pytest.fixture
def compose_fn():
    return compose_cfg
