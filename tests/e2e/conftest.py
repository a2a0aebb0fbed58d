"""One real stack per session; its logs go into the report of any test that fails."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
from e2e.engines import Engine, missing_engine_binaries, start_engine
from e2e.stack import Stack, launch_stack, missing_binaries, new_stack

STACK_KEY = pytest.StashKey[Stack]()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    _require(missing_binaries(), "docker-registry nginx skopeo")
    running = new_stack(tmp_path_factory.mktemp("stack"))
    # Registered before it starts, so a start-up failure's report carries the logs too.
    request.config.stash[STACK_KEY] = running
    try:
        yield launch_stack(running)
    finally:
        running.stop()


def _require(missing: list[str], packages: str) -> None:
    if missing:
        message = f"the end-to-end suite needs {', '.join(missing)} (apt-get install {packages})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def engine(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """dockerd (with its containerd) for the docker and ctr clients, stopped by its PID."""
    _require(missing_engine_binaries(), "docker.io")
    running = start_engine(stack.root / "engine", stack)
    stack.processes.append(running.running)
    try:
        yield running
    finally:
        running.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    running = item.config.stash.get(STACK_KEY, None)
    if report.failed and running is not None:
        for name, tail in running.logs():
            report.sections.append((f"{name} log (last lines)", tail))
    return report
