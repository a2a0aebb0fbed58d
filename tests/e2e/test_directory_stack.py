"""Directory accounts end to end: a real slapd, the real twistd with --ldap-*, the real registry
behind nginx, and skopeo. A musician pushes into the repositories his directory groups give him
and pulls them back; a philosopher (outside the search base) is refused; a users.json account
keeps working next to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e.conftest import _require
from e2e.stack import Stack, launch_stack, missing_binaries, new_stack
from ldap_server import BASE, PASSWORD, SERVICE_DN, Slapd, group_dn

pytestmark = pytest.mark.e2e

GROUPS = {
    "composers": {
        "ldap_groups": [group_dn("composers")],
        "repositories": {"composers/${account}/*": ["pull", "push"], "library/*": ["pull"]},
    }
}


@pytest.fixture(scope="module")
def directory_stack(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd) -> Iterator[Stack]:
    """Against the session's slapd (tests/ldap_server.py): this module only reads from it."""
    _require(missing_binaries(), "docker-registry nginx skopeo")
    running = new_stack(
        tmp_path_factory.mktemp("directory"),
        tokend_args=(
            *("--ldap-url", slapd.url, "--ldap-base", BASE),
            *("--ldap-bind-dn", SERVICE_DN),
            *("--ldap-bind-password-file", str(slapd.bind_password_file)),
        ),
    )
    try:
        stack = launch_stack(running)
        stack.rewrite("groups.json", GROUPS)
        yield stack
    finally:
        running.stop()


def test_a_musician_pushes_and_pulls_what_his_groups_allow(directory_stack: Stack) -> None:
    stack = directory_stack
    image = stack.new_image()
    pushed = stack.push(image, "composers/mozart/requiem", f"mozart:{PASSWORD}")
    assert pushed.ok, pushed.stderr
    assert stack.stored_tag("composers/mozart/requiem") == image.manifest_digest
    pulled, _ = stack.pull("composers/mozart/requiem", f"bach:{PASSWORD}")
    assert not pulled.ok  # ${account}: bach's namespace is composers/bach, not mozart's
    pulled, _ = stack.pull("composers/mozart/requiem", f"mozart:{PASSWORD}")
    assert pulled.ok, pulled.stderr
    denied = stack.push(stack.new_image(), "composers/bach/mass", f"mozart:{PASSWORD}")
    assert not denied.ok
    assert stack.stored_tag("composers/bach/mass") is None


def test_a_philosopher_and_a_wrong_password_are_refused(
    directory_stack: Stack, slapd: Slapd
) -> None:
    stack = directory_stack
    for creds in (f"kant:{PASSWORD}", "mozart:not-his-password", "mozart:"):
        result = stack.push(stack.new_image(), "composers/kant/critique", creds)
        assert not result.ok, creds
    assert stack.stored_tag("composers/kant/critique") is None
    log = (stack.root / "tokend.log").read_text()
    assert "refused" in log and "kant" in log
    assert "not-his-password" not in log
    assert slapd.bind_password.decode() not in log


def test_users_json_accounts_work_next_to_the_directory(directory_stack: Stack) -> None:
    stack = directory_stack
    pushed = stack.push(stack.new_image(), "team/next-to-ldap", "bar:bar")
    assert pushed.ok, pushed.stderr
