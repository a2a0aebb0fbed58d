"""The --ldap-* options: parsed into one DirectoryConfig, also from TOKEND_* variables, and
refused with one sentence when they cannot work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import (
    parsed_options,
    parsed_settings,
    start_failure,
    start_twistd,
    stop_process,
    write_key_pair,
    write_policy,
)
from twisted.python.usage import UsageError

from tokend.login.ldap.config import DEFAULT_FILTER, DEFAULT_GROUP_FILTER

BASE = "ou=musicians,dc=example,dc=com"
SERVICE_DN = "uid=serviceaccount,ou=it,dc=example,dc=com"


def password_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "bind-password"
    path.write_bytes(b"s3cret\r\n")
    path.chmod(mode)
    return path


def test_without_ldap_url_there_is_no_directory(tmp_path: Path) -> None:
    assert parsed_settings(tmp_path).directory.config is None


def test_options_make_one_directory_config(tmp_path: Path) -> None:
    options = parsed_options(
        tmp_path,
        "--ldap-url", "ldap://127.0.0.1:3890", "--ldap-url", "ldap://127.0.0.1:3891",
        "--ldap-starttls", "--ldap-base", BASE, "--ldap-bind-dn", SERVICE_DN,
        "--ldap-bind-password-file", str(password_file(tmp_path)),
        "--ldap-filter", "(sAMAccountName={account})", "--ldap-timeout", "2.5",
    )  # fmt: skip
    config = options.settings.directory.config
    assert config.urls == ("ldap://127.0.0.1:3890", "ldap://127.0.0.1:3891")
    assert config.starttls and config.base == BASE and config.bind_dn == SERVICE_DN
    assert config.bind_password == b"s3cret"
    assert config.filter == "(sAMAccountName={account})"
    assert config.group_attribute == "memberOf" and config.group_base is None
    assert config.group_filter == DEFAULT_GROUP_FILTER and config.timeout == 2.5


def test_environment_variables_configure_the_directory(tmp_path: Path) -> None:
    environ = {
        "TOKEND_LDAP_URL": "ldaps://a.example:636,ldaps://b.example:636",
        "TOKEND_LDAP_BASE": BASE,
        "TOKEND_LDAP_GROUP_BASE": "ou=groups,dc=example,dc=com",
    }
    config = parsed_settings(tmp_path, environ=environ).directory.config
    assert config.urls == ("ldaps://a.example:636", "ldaps://b.example:636")
    assert config.group_base == "ou=groups,dc=example,dc=com"
    assert config.filter == DEFAULT_FILTER and config.bind_dn is None
    assert config.active_filter is None
    environ["TOKEND_LDAP_ACTIVE_FILTER"] = "(!(nsAccountLock=TRUE))"
    config = parsed_settings(tmp_path, environ=environ).directory.config
    assert config.active_filter == "(!(nsAccountLock=TRUE))"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ldap-url", "ldap://127.0.0.1:389"], "needs --ldap-base"),
        (["--ldap-url", "http://x", "--ldap-base", BASE], "ldap://"),
        (["--ldap-url", "ldap://x", "--ldap-base", "musicians"], "not a DN"),
        (["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-bind-dn", SERVICE_DN], "together"),
        (["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-filter", "(uid=x)"], "{account}"),
        (["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-timeout", "0"], "between"),
        (["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-ca-cert", "/nope"], "cannot read"),
        (["--ldap-url", "ldaps://x", "--ldap-base", BASE, "--ldap-starttls"], "StartTLS"),
        (
            ["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-active-filter", "(!(x=*)"],
            "is not an LDAP filter",
        ),
        (
            [
                "--ldap-url",
                "ldap://x",
                "--ldap-base",
                BASE,
                "--ldap-active-filter",
                "(uid={account})",
            ],
            "takes no placeholder",
        ),
    ],
)
def test_unusable_directory_options_are_refused(
    tmp_path: Path, args: list[str], message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parsed_options(tmp_path, *args)


def test_a_loose_bind_password_file_is_refused_unless_allowed(tmp_path: Path) -> None:
    loose = password_file(tmp_path, 0o644)
    args = ["--ldap-url", "ldap://x", "--ldap-base", BASE, "--ldap-bind-dn", SERVICE_DN]
    with pytest.raises(UsageError, match="chmod 600"):
        parsed_options(tmp_path, *args, "--ldap-bind-password-file", str(loose))
    options = parsed_options(
        tmp_path, *args, "--ldap-bind-password-file", str(loose), "--allow-loose-key-permissions"
    )
    assert options.settings.directory.config.bind_password == b"s3cret"
    assert "s3cret" not in repr(options.settings.directory.config)


def test_a_ca_cert_that_is_not_pem_is_one_sentence(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a certificate")
    args = ["--ldap-url", "ldaps://x", "--ldap-base", BASE, "--ldap-ca-cert", str(not_pem)]
    with pytest.raises(UsageError) as raised:
        parsed_options(tmp_path, *args)
    assert str(raised.value) == (
        f"--ldap-ca-cert: directory CA certificate {not_pem} is not a PEM certificate"
    )
    environ = {"TOKEND_LDAP_URL": "ldaps://x", "TOKEND_LDAP_BASE": BASE,
               "TOKEND_LDAP_CA_CERT": str(not_pem)}  # fmt: skip
    with pytest.raises(UsageError, match=r"^TOKEND_LDAP_CA_CERT: directory CA certificate"):
        parsed_options(tmp_path, environ=environ)


@pytest.mark.parametrize(
    ("args", "environ", "warning"),
    [
        (["--ldap-base", BASE], {}, "--ldap-base is ignored"),
        ([], {"TOKEND_LDAP_BASE": BASE}, "TOKEND_LDAP_BASE is ignored"),
        (
            ["--ldap-starttls", "--ldap-filter", "(uid={account})"],
            {"TOKEND_LDAP_BIND_DN": SERVICE_DN},
            "--ldap-starttls, TOKEND_LDAP_BIND_DN, --ldap-filter are ignored",
        ),
    ],
)
def test_directory_options_without_a_url_are_ignored_with_a_warning(
    tmp_path: Path, args: list[str], environ: dict[str, str], warning: str
) -> None:
    """The tool's rule too (test_cli_directory.py): accepted, ignored, said once."""
    options = parsed_options(tmp_path, *args, environ=environ)
    assert options.settings.directory.config is None
    assert (
        options.settings.directory.ignored == f"{warning}: no --ldap-url names a directory to ask"
    )
    assert parsed_settings(tmp_path).directory.ignored is None


def test_twistd_stops_on_a_ca_cert_that_is_not_pem_and_warns_about_a_base_alone(
    tmp_path: Path,
) -> None:
    """Through a real start: one sentence and no traceback (makeService used to raise)."""
    config = tmp_path / "config"
    write_policy(config, {"bar": ("bar", {"*": ["pull"]})}, {"repositories": []})
    key_path, cert_path = write_key_pair(tmp_path)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    common = ["--config-dir", str(config), "--key", str(key_path), "--cert", str(cert_path)]
    text = start_failure(
        tmp_path, *common, "--listen", f"unix:{tmp_path / 'a.sock'}",
        "--ldap-url", "ldaps://127.0.0.1:1", "--ldap-base", BASE, "--ldap-ca-cert", str(not_pem),
    )  # fmt: skip
    assert f"--ldap-ca-cert: directory CA certificate {not_pem} is not a PEM certificate" in text

    sock, log = tmp_path / "b.sock", tmp_path / "started.log"
    process = start_twistd(*common, "--listen", f"unix:{sock}", "--ldap-base", BASE, log=log)
    try:
        deadline = time.monotonic() + 30
        while "tokend listening on" not in (log.read_text() if log.exists() else ""):
            assert process.poll() is None, log.read_text() if log.exists() else ""
            assert time.monotonic() < deadline, "not listening after 30 s"
            time.sleep(0.05)
    finally:
        stop_process(process)
    assert "--ldap-base is ignored: no --ldap-url names a directory to ask" in log.read_text()
