"""``twistd registry-token`` options as parsed, and what start-up logs, without a process."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from daemons import announce, parsed
from support import write_key_pair, write_policy
from twisted.python.usage import UsageError

from tokend.policy.holder import PolicyHolder
from tokend.signing.key_dir import create_key, read_state
from tokend.tap import Options


@pytest.mark.parametrize(
    ("environ", "args", "message"),
    [
        ({"TOKEND_TOKEN_TTL": "abc"}, [], "TOKEND_TOKEN_TTL must be a whole number"),
        ({"TOKEND_TOKEN_TTL": "5"}, [], "TOKEND_TOKEN_TTL must be between 60 and 3600"),
        ({"TOKEND_TOKEN_TTL": "300"}, ["--token-ttl", "abc"], "--token-ttl must be a whole"),
        ({"TOKEND_TOKEN_TTL": "abc"}, ["--token-ttl", "abc"], "--token-ttl must be a whole"),
        ({"TOKEND_BCRYPT_QUEUE": "-1"}, [], "TOKEND_BCRYPT_QUEUE must be between 0"),
        ({"TOKEND_KID": "sha1"}, [], "TOKEND_KID must be one of"),
        ({"TOKEND_TRUSTED_PROXY": "nginx"}, [], "TOKEND_TRUSTED_PROXY 'nginx' is not an IP"),
        ({}, ["--trusted-proxy", "nginx"], "--trusted-proxy 'nginx' is not an IP"),
    ],
)
def test_a_bad_value_is_named_where_it_came_from(
    tmp_path: Path, environ: dict[str, str], args: list[str], message: str
) -> None:
    with pytest.raises(UsageError) as error:
        parsed(tmp_path, *args, environ=environ)
    assert str(error.value).startswith(message)


def test_under_twistd_a_usage_error_is_one_sentence_and_no_help_text(tmp_path: Path) -> None:
    """twistd prints its whole --help text for a UsageError; a SystemExit carries only ours."""
    write_policy(tmp_path / "config", {})
    options = Options(environ={})
    options.parent = Options(environ={})  # as twistd's ServerOptions sets it
    with pytest.raises(SystemExit) as exit_info:
        options.parseOptions(
            ["--listen", "tcp:0", "--config-dir", str(tmp_path / "config"), "--key", "missing.key"]
        )
    assert exit_info.value.code == (
        "twistd registry-token: key missing.key does not exist; for development, start the "
        "daemon with --dev-cert (or run tokend dev-cert) to create a key pair there"
    )


def test_dev_cert_refuses_to_write_through_a_dangling_key_link(tmp_path: Path) -> None:
    write_policy(tmp_path / "config", {})
    target = tmp_path / "elsewhere" / "planted.key"
    target.parent.mkdir()
    link = tmp_path / "certs" / "RootCA.key"
    link.parent.mkdir()
    link.symlink_to(target)
    options = Options(environ={})
    with pytest.raises(UsageError, match=r"is a symbolic link to .*, which does not exist"):
        options.parseOptions(
            [
                "--listen", "tcp:0:interface=127.0.0.1", "--config-dir", str(tmp_path / "config"),
                "--key", str(link), "--cert", str(tmp_path / "certs" / "RootCA.crt"), "--dev-cert",
            ]
        )  # fmt: skip
    assert not target.exists()
    assert not (tmp_path / "certs" / "RootCA.crt").exists()


def test_a_missing_socket_directory_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "run"
    with pytest.raises(UsageError, match=f"socket directory {missing} does not exist"):
        parsed(tmp_path, "--listen", f"unix:{missing}/tokend.sock")
    assert not (tmp_path / "typo").exists()


def test_the_default_socket_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first command starts from a fresh checkout, which has no run/."""
    write_policy(tmp_path / "config", {})
    write_key_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    options = Options(environ={})
    options.parseOptions(["--key", "p256.key", "--cert", "p256.crt"])
    assert (tmp_path / "run").is_dir()
    assert options.settings.listen.socket_path == "run/tokend.sock"


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "10.0.0.0/0"])
def test_a_proxy_prefix_of_length_zero_is_accepted_with_a_loud_warning(
    tmp_path: Path, network: str
) -> None:
    options = parsed(tmp_path, "--trusted-proxy", "192.0.2.1", "--trusted-proxy", network)
    assert [str(n) for n in options.settings.listen.trusted_proxies] == [
        "192.0.2.1/32",
        str(ipaddress.ip_network(network, strict=False)),
    ]
    warnings = [e for e in announce(options) if "trusts every TCP peer" in e["log_format"]]
    assert len(warnings) == 1
    assert warnings[0]["log_level"].name == "warn"
    assert warnings[0]["option"] == "--trusted-proxy"
    assert warnings[0]["network"] == str(options.settings.listen.trusted_proxies[1])
    sentence = warnings[0]["log_format"]
    assert "every client can then choose its own address for throttling" in sentence


def test_named_proxies_give_no_warning(tmp_path: Path) -> None:
    options = parsed(tmp_path, environ={"TOKEND_TRUSTED_PROXY": "10.0.0.0/8,::1"})
    assert not [e for e in announce(options) if "trusts every TCP peer" in e["log_format"]]
    everyone = parsed(tmp_path, environ={"TOKEND_TRUSTED_PROXY": "::/0"})
    (warning,) = [e for e in announce(everyone) if "trusts every TCP peer" in e["log_format"]]
    assert warning["option"] == "TOKEND_TRUSTED_PROXY"


def test_start_up_logs_the_loaded_policy(tmp_path: Path) -> None:
    write_policy(
        tmp_path / "config",
        {"a": ("pw", {}), "b": ("pw", {}), "c": ("pw", {})},
        {"blacklist": True, "repositories": ["secret/**"], "catalog": True},
    )
    users = json.loads((tmp_path / "config" / "users.json").read_text())
    users["a"]["groups"] = ["staff", "ops"]
    (tmp_path / "config" / "users.json").write_text(json.dumps(users))
    groups = {"staff": {"repositories": {"*": ["pull"]}}, "ops": {"repositories": {}}}
    (tmp_path / "config" / "groups.json").write_text(json.dumps(groups))
    options = parsed(tmp_path)
    holder = PolicyHolder(options.settings.policy.loaded.policy, 0.0)
    holder.replace(options.settings.policy.loaded.policy, 1.0)
    (event,) = [e for e in announce(options, holder) if "users" in e]
    assert {
        name: event[name]
        for name in (
            "generation", "users", "groups", "anonymous_mode", "anonymous_names",
            "anonymous_catalog",
        )
    } == {
        "generation": 2, "users": 3, "groups": 2, "anonymous_mode": "blacklist",
        "anonymous_names": 1, "anonymous_catalog": "on",
    }  # fmt: skip
    assert event["log_level"].name == "info"


def keys_dir_options(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> Options:
    """Options with a policy and no --key/--cert on the command line."""
    if not (tmp_path / "config").exists():
        write_policy(tmp_path / "config", {"a": ("pw", {"*": ["pull"]})})
    options = Options(environ=environ or {})
    options.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--config-dir", str(tmp_path / "config"), *args]
    )
    return options


def test_keys_dir_gives_the_set_it_records(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = create_key(keys, now=1_700_000_000)
    second = create_key(keys, "Ed25519", now=1_700_000_100)
    settings = keys_dir_options(tmp_path, "--keys-dir", str(keys)).settings
    signing = settings.signing
    assert signing.keys_dir == keys
    assert signing.keys.source == f"--keys-dir {keys}"
    assert [(key.name, key.state) for key in signing.keys.keys] == [
        (first, "current"),
        (second, "next"),
    ]
    assert signing.keys.shared_secret is not None
    from_environment = keys_dir_options(tmp_path, environ={"TOKEND_KEYS_DIR": str(keys)})
    assert from_environment.settings.signing.keys_dir == keys


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["--key", "k.key"], {}, "--keys-dir replaces --key and --cert"),
        (["--cert", "c.crt"], {}, "--keys-dir replaces --key and --cert"),
        ([], {"TOKEND_CERT": "c.crt"}, "--keys-dir replaces --key and --cert"),
    ],
)
def test_keys_dir_and_key_or_cert_are_not_both_given(
    tmp_path: Path, args: list[str], environ: dict[str, str], message: str
) -> None:
    keys = tmp_path / "keys"
    create_key(keys)
    with pytest.raises(UsageError, match=message):
        keys_dir_options(tmp_path, "--keys-dir", str(keys), *args, environ=environ)


def test_keys_dir_missing_is_one_sentence_and_dev_cert_creates_its_first_key(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    with pytest.raises(UsageError, match=f"keys directory {keys} does not exist"):
        keys_dir_options(tmp_path, "--keys-dir", str(keys))
    created = keys_dir_options(tmp_path, "--keys-dir", str(keys), "--dev-cert").settings
    assert created.signing.created_dev_cert
    (name,) = [key.name for key in created.signing.keys.keys]
    assert read_state(keys).current == name
    again = keys_dir_options(tmp_path, "--keys-dir", str(keys), "--dev-cert")
    assert not again.settings.signing.created_dev_cert
    assert again.settings.signing.keys.signing.kid == created.signing.keys.signing.kid
    events = announce(again)
    assert not any("created a development key" in str(e.get("log_format")) for e in events)


def test_no_x5c_names_every_key_by_kid_only_at_start_and_on_reload(tmp_path: Path) -> None:
    """--no-x5c (TOKEND_NO_X5C): for a 3.x registry trusting a JWKS without a bundle, the
    tokens carry no x5c, with --keys-dir and with --key/--cert, and a reload keeps it so."""
    keys = tmp_path / "keys"
    create_key(keys)
    create_key(keys)
    key_path, cert_path = write_key_pair(tmp_path)
    for args, environ in (
        (["--keys-dir", str(keys), "--no-x5c"], {}),
        (["--keys-dir", str(keys)], {"TOKEND_NO_X5C": "1"}),
        (["--key", str(key_path), "--cert", str(cert_path), "--no-x5c"], {}),
    ):
        signing = keys_dir_options(tmp_path, *args, environ=environ).settings.signing
        assert not signing.send_x5c
        for loaded in (signing.keys, signing.loader()(time.time())):
            assert [("x5c" in key.signing.header, key.signing.chain) for key in loaded.keys] == [
                (False, ())
            ] * len(loaded.keys), args
            assert loaded.signing.kid == loaded.signing.header["kid"]
    sent = keys_dir_options(tmp_path, "--keys-dir", str(keys)).settings.signing
    assert sent.send_x5c and all("x5c" in key.signing.header for key in sent.keys.keys)
