"""``--workers 2`` behind the real nginx and registry: skopeo pushes and pulls through either
worker, a policy edit reaches both, a SIGKILLed worker is replaced while the registry keeps
working."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import _require
from e2e.stack import SERVICE, Stack, launch_stack, missing_binaries, new_stack, wait_until
from support import pids_issuing

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workers_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require(missing_binaries(), "docker-registry nginx skopeo")
    running = new_stack(tmp_path_factory.mktemp("workers"), tokend_args=("--workers", "2"))
    try:
        yield launch_stack(running)
    finally:
        running.stop()


def tokend_pid(stack: Stack) -> int:
    return next(p.process.pid for p in stack.processes if p.name == "tokend")


def worker_pids(stack: Stack) -> set[int]:
    parent = tokend_pid(stack)
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children}


def pids_serving(stack: Stack, connections: int = 40) -> set[int]:
    """The workers that answered anonymous token requests on the one socket."""
    log = stack.root / "tokend.log"
    url = f"/v2/token?service={SERVICE}"
    return pids_issuing(log.read_text, stack.tokend_socket, url, connections)


def generation_by_pid(stack: Stack) -> dict[int, Any]:
    """pid → policy generation, for each worker answering the metrics listener's /healthz."""
    return {w["pid"]: w["policy_generation"] for w in stack.health()["workers"]}


def test_push_and_pull_through_two_workers(workers_stack: Stack) -> None:
    stack = workers_stack
    wait_until(lambda: len(worker_pids(stack)) == 2, "two workers")
    wait_until(
        lambda: pids_serving(stack) == worker_pids(stack),
        "both workers serving (the second may still be starting)",
    )
    for number in range(3):  # one token request per operation: both workers get some
        image = stack.new_image()
        pushed = stack.push(image, f"workers/app{number}", "bar:bar")
        assert pushed.ok, pushed.stderr
        pulled, _ = stack.pull(f"workers/app{number}", "foo:foo")
        assert pulled.ok, pulled.stderr
    denied = stack.push(stack.new_image(), "workers/nope", "foo:foo")
    assert not denied.ok


def test_an_edit_reaches_both_workers_and_a_killed_one_is_replaced(workers_stack: Stack) -> None:
    stack = workers_stack
    before = worker_pids(stack)
    original = stack.read("users.json")
    granted = json.loads(json.dumps(original))
    granted["foo"]["repositories"]["*"] = ["pull", "push"]
    stack.rewrite("users.json", granted)
    try:
        generation = stack.generation()
        wait_until(
            lambda: set(generation_by_pid(stack).values()) == {generation},
            "the edit in both workers",
        )
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(stack) - {victim}) == 2, "a replacement worker")
        after = worker_pids(stack)
        wait_until(lambda: pids_serving(stack, 20) == after, "the new worker serving")
        pushed = stack.push(stack.new_image(), "workers/foo-app", "foo:foo")
        assert pushed.ok, pushed.stderr
    finally:
        stack.rewrite("users.json", original)
