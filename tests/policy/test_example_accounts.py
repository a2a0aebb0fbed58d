"""The example accounts config/users.json ships (foo/foo, bar/bar) never serve a production
daemon: start-up refuses them, a reload that brings them in is refused like a broken edit, and
``tokend check-config`` warns; only ``--dev-cert`` (a development daemon) starts with them.
The real twistd's side is in tests/daemon/test_daemon.py."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import bcrypt
import pytest
from support import REPO, settled, write_policy
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from tokend.cli import main
from tokend.policy.examples import EXAMPLE_HASHES, example_accounts, refusing_examples
from tokend.policy.files import load_policy
from tokend.policy.holder import PolicyHolder
from tokend.policy.reload import PolicyReloader, load_settled
from tokend.threads import InlineRunner

SHIPPED = REPO / "config" / "users.json"


def test_the_hashes_kept_are_the_shipped_files_and_their_passwords_are_the_names() -> None:
    """If config/users.json changes, the check must change with it."""
    shipped = json.loads(SHIPPED.read_text())
    assert {name: user["pass_hash"] for name, user in shipped.items()} == EXAMPLE_HASHES
    for name, hashed in EXAMPLE_HASHES.items():
        assert bcrypt.checkpw(name.encode(), hashed.encode())
    assert example_accounts(load_policy(SHIPPED.parent).policy) == ("bar", "foo")


def test_an_example_hash_under_another_name_is_found_too(tmp_path: Path) -> None:
    write_policy(tmp_path, {"alice": ("alice-pw", {"*": ["pull"]}), "robot": ("x", {})})
    users = json.loads((tmp_path / "users.json").read_text())
    users["robot"]["pass_hash"] = EXAMPLE_HASHES["bar"]
    (tmp_path / "users.json").write_text(json.dumps(users))
    assert example_accounts(load_policy(tmp_path).policy) == ("robot",)


def copy_of_the_example(tmp_path: Path) -> Path:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    return config


def test_start_up_refuses_them_in_one_sentence_without_dev_cert(tmp_path: Path) -> None:
    from support import parsed_options

    config = copy_of_the_example(tmp_path)
    with pytest.raises(UsageError) as refused:
        parsed_options(tmp_path, "--config-dir", str(config))
    assert str(refused.value) == (
        f"{config}/users.json: bar, foo have the example passwords shipped with tokend, which "
        "anyone can look up; write your own users.json with tokend hash-password, or pass "
        "--dev-cert to run a development daemon"
    )
    options = parsed_options(tmp_path, "--config-dir", str(config), "--dev-cert")
    assert example_accounts(options.settings.policy.loaded.policy) == ("bar", "foo")
    from_environment = parsed_options(
        tmp_path, "--config-dir", str(config), environ={"TOKEND_DEV_CERT": "1"}
    )
    assert example_accounts(from_environment.settings.policy.loaded.policy) == ("bar", "foo")


def test_a_reload_that_brings_them_in_is_refused_like_a_broken_edit(tmp_path: Path) -> None:
    config = tmp_path / "config"
    write_policy(config, {"alice": ("alice-pw", {"*": ["pull"]})})
    clock = Clock()
    holder = PolicyHolder(load_policy(config).policy, clock.seconds())
    reloader = PolicyReloader(
        config, holder, clock, InlineRunner(), refusing_examples(load_settled)
    )
    shutil.copy(SHIPPED, config / "users.json")
    settled(reloader.reload("test"))
    assert (holder.generation, list(holder.current.users)) == (1, ["alice"])
    assert holder.last_error is not None
    assert holder.last_error.startswith(f"{config}/users.json: bar, foo have the example ")

    write_policy(config, {"alice": ("alice-pw", {"*": ["pull"]}), "bob": ("b", {})})
    settled(reloader.reload("test"))
    assert (holder.generation, holder.last_error) == (2, None)

    development = PolicyReloader(config, holder, clock, InlineRunner(), load_settled)
    shutil.copy(SHIPPED, config / "users.json")
    settled(development.reload("test"))
    assert (holder.generation, sorted(holder.current.users)) == (3, ["bar", "foo"])


def test_check_config_warns(tmp_path: Path) -> None:
    config = copy_of_the_example(tmp_path)
    out = io.StringIO()
    assert main(["check-config", "--config-dir", str(config)], stdout=out) == 0
    assert (
        f"warning: {config}/users.json: bar, foo have the example passwords shipped with tokend"
    ) in out.getvalue()
