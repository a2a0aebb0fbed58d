"""The --ldap-* options: parsed into one DirectoryConfig, also from TOKEND_* variables, and
refused with one sentence when they cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import parsed_options
from twisted.python.usage import UsageError

from tokend.login.directory import DEFAULT_FILTER, DEFAULT_GROUP_FILTER

BASE = "ou=musicians,dc=example,dc=com"
SERVICE_DN = "uid=serviceaccount,ou=it,dc=example,dc=com"


def password_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "bind-password"
    path.write_bytes(b"s3cret\r\n")
    path.chmod(mode)
    return path


def test_without_ldap_url_there_is_no_directory(tmp_path: Path) -> None:
    assert parsed_options(tmp_path).directory is None
    assert parsed_options(tmp_path, "--ldap-base", BASE).directory is None


def test_options_make_one_directory_config(tmp_path: Path) -> None:
    options = parsed_options(
        tmp_path,
        "--ldap-url", "ldap://127.0.0.1:3890", "--ldap-url", "ldap://127.0.0.1:3891",
        "--ldap-starttls", "--ldap-base", BASE, "--ldap-bind-dn", SERVICE_DN,
        "--ldap-bind-password-file", str(password_file(tmp_path)),
        "--ldap-filter", "(sAMAccountName={account})", "--ldap-timeout", "2.5",
    )  # fmt: skip
    config = options.directory
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
    config = parsed_options(tmp_path, environ=environ).directory
    assert config.urls == ("ldaps://a.example:636", "ldaps://b.example:636")
    assert config.group_base == "ou=groups,dc=example,dc=com"
    assert config.filter == DEFAULT_FILTER and config.bind_dn is None


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
    assert options.directory.bind_password == b"s3cret"
    assert "s3cret" not in repr(options.directory)
