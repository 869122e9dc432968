"""The command-line tests' shared run: one real two-process DDP `train.py` (Lightning starts the second process,
gloo on the CPU), the reference of tests/cli/test_multinode.py's launchers and the J&F-sync check of
tests/cli/test_train.py. Starting a process that imports Lightning takes seconds on the 2-core machine: the run
is made once per session, and started without waiting for it, so that a test can start the run it compares with
it beside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.runs import Processes, SharedDDPRun


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDDPRun]:
    """The shared run, started (call ``wait()`` for its outcome)."""
    with Processes() as runs:
        yield SharedDDPRun(runs, tmp_path_factory.mktemp("ddp_run"))
