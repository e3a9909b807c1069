"""The fs tests that reach the server run over http and over https."""

from __future__ import annotations

import pytest

from tests.conftest import over_both_schemes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    over_both_schemes(metafunc)
