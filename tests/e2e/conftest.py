"""The ``local_stack`` fixture of the e2e and browser tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole local stack, up once for this package's tests (see tests/stack_harness.py).

    Package-scoped, not session-scoped: its ``down`` (~10 s, most of it Airflow 3.0.2's
    triggerer waiting on its trigger runner) then runs as soon as the package's last test is
    done, while the other pytest-xdist worker still has tests, not at the very end of the run.
    """
    from tests import stack_harness

    stack = stack_harness.start(tmp_path_factory.mktemp("local-stack"))
    yield stack
    stack_harness.stop_and_check(stack)
