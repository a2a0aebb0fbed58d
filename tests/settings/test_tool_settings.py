"""The ``tokend`` tool reads the daemon's options from the same declarations and the same
``TOKEND_*`` variables, so ``docker exec … tokend check-config`` checks what the daemon runs
with; the command line wins over the environment, as for the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from support import run_tool, write_key_pair, write_policy

from tokend.cli import build_parser
from tokend.client_address import parse_networks
from tokend.login.ldap.options import DIRECTORY_OPTIONS
from tokend.proxy_exposure import proxy_exposure
from tokend.settings.options import DAEMON
from tokend.tap import Options

BASE = "ou=musicians,dc=example,dc=com"


def command(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["check-config", "explain"])
def test_the_tool_and_the_daemon_take_the_ldap_options_from_one_table(name: str) -> None:
    tool = {
        action.option_strings[0]: action
        for action in command(name)._actions
        if action.option_strings
        and action.option_strings[0].startswith("--ldap-")
        and action.dest != "ldap_group"
    }
    assert sorted(tool) == sorted(option.flag_name for option in DIRECTORY_OPTIONS)
    daemon_rows = {row[0]: row for row in [*Options.optParameters, *Options.optFlags]}
    for option in DIRECTORY_OPTIONS:
        assert DAEMON[option.name] is option
        assert tool[option.flag_name].help is option.help
        assert daemon_rows[option.name][-1] == option.help_with_env
        handler = getattr(Options, "opt_" + option.name.replace("-", "_"), None)
        assert handler is None or handler.__doc__ == option.help_with_env, "what --help shows"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_policy(tmp_path / "env-config", {"bach": ("pw", {"*": ["pull"]})})
    write_policy(tmp_path / "cli-config", {"mozart": ("pw", {"*": ["pull"]})})
    return tmp_path


def test_the_policy_options_come_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config / "env-config"))
    code, out, err = run_tool("check-config")
    assert (code, err) == (0, "")
    assert f"{config / 'env-config'}: policy is valid: 1 users" in out
    code, out, _ = run_tool("explain", "bach", "repository:a/b:pull")
    assert code == 0 and "'bach' gets pull" in out
    code, out, _ = run_tool("user", "list")
    assert code == 0 and "bach" in out
    code, out, _ = run_tool("check-config", "--config-dir", str(config / "cli-config"))
    assert code == 0 and f"{config / 'cli-config'}: policy is valid" in out, "the command line wins"


def test_the_directory_options_come_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config / "env-config"))
    monkeypatch.setenv("TOKEND_LDAP_BASE", BASE)
    code, out, err = run_tool("check-config")
    assert (code, err) == (0, "")
    assert out.startswith(
        "warning: TOKEND_LDAP_BASE is ignored: no --ldap-url names a directory to ask\n"
    )
    monkeypatch.delenv("TOKEND_LDAP_BASE")
    monkeypatch.setenv("TOKEND_LDAP_URL", "ldap://127.0.0.1:1")
    code, out, err = run_tool("check-config")
    assert (code, out) == (2, "")
    assert err == "tokend check-config: TOKEND_LDAP_URL needs --ldap-base (a DN)\n"
    monkeypatch.setenv("TOKEND_LDAP_BASE", BASE)
    monkeypatch.setenv("TOKEND_LDAP_TIMEOUT", "0")
    code, out, err = run_tool("explain", "mozart", "repository:a/b:pull")
    assert (code, out) == (2, "")
    assert err == "tokend explain: TOKEND_LDAP_TIMEOUT must be between 0 and 300 s\n"
    code, out, err = run_tool("explain", "--anonymous", "repository:a/b:pull")
    assert (code, err) == (0, ""), "the daemon's directory is not asked about anonymous clients"
    code, out, err = run_tool("explain", "--ldap-group", BASE, "mozart", "repository:a/b:pull")
    assert (code, err) == (0, ""), "nor with the groups given"
    code, _, err = run_tool(
        "explain", "--ldap-url", "ldap://x", "--anonymous", "repository:a/b:pull"
    )
    assert code == 2 and "drop the --ldap-* options" in err


def test_the_signing_options_come_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path, cert_path = write_key_pair(config)
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config / "env-config"))
    monkeypatch.setenv("TOKEND_KEY", str(key_path))
    monkeypatch.setenv("TOKEND_CERT", str(cert_path))
    code, out, err = run_tool("check-config")
    assert (code, err) == (0, "")
    assert f"key {key_path}: P-256 (ES256)\n" in out
    assert f"certificate {cert_path}" in out
    key_path.chmod(0o640)
    code, out, err = run_tool("check-config")
    assert code == 1 and "chmod 600" in err
    monkeypatch.setenv("TOKEND_ALLOW_LOOSE_KEY_PERMISSIONS", "yes")
    assert run_tool("check-config")[0] == 0


def test_the_listen_options_come_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listen, trusted = "tcp:5001", "10.0.0.0/8"
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config / "env-config"))
    monkeypatch.setenv("TOKEND_LISTEN", listen)
    monkeypatch.setenv("TOKEND_TRUSTED_PROXY", f"{trusted},192.0.2.1")
    code, out, err = run_tool("check-config")
    assert (code, err) == (0, "")
    expected = proxy_exposure(
        listen, parse_networks([trusted, "192.0.2.1"]), "TOKEND_LISTEN", "TOKEND_TRUSTED_PROXY"
    )
    assert f"warning: {expected}\n" in out
    code, out, _ = run_tool("check-config", "--trusted-proxy", "127.0.0.1")
    assert code == 0 and "warning" not in out, "the command line replaces the variable's list"


def test_the_login_limits_come_from_the_environment_with_the_daemons_bounds(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_CONFIG_DIR", str(config / "env-config"))
    monkeypatch.setenv("TOKEND_FAILURE_WINDOW", "0")
    code, out, err = run_tool("check-config")
    assert (code, out) == (2, "")
    assert err == "tokend check-config: TOKEND_FAILURE_WINDOW must be between 1 and 86400\n"
    code, out, err = run_tool("check-config", "--failure-window", "60")
    assert (code, err) == (0, "")
