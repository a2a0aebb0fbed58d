"""How to reach the directory and find accounts in it: the ``--ldap-*`` settings as one
checked value, and the file readers and filter helpers they need. The client is
:mod:`tokend.login.ldap.client`.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from tokend.dn import DNError, normalise_dn
from tokend.login.ldap.options import DEFAULT_FILTER as DEFAULT_FILTER
from tokend.login.ldap.options import DEFAULT_GROUP_ATTRIBUTE as DEFAULT_GROUP_ATTRIBUTE
from tokend.login.ldap.options import DEFAULT_GROUP_FILTER as DEFAULT_GROUP_FILTER
from tokend.login.ldap.options import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from tokend.login.ldap.options import MAX_TIMEOUT
from tokend.option_table import Layered, OptionError, UnreadableSecret
from tokend.secret_files import read_secret

# ldaptor 21.2 still calls pyparsing by its pre-3.0 names: pyparsing 3.3 warns when the filter
# grammar is built and at every filter parsed, as a UserWarning (shown by default). Only those
# are silenced, before ldaptor's filter module is imported.
warnings.filterwarnings("ignore", message=r"'\w+' deprecated - use '\w+'", module="ldaptor")
_ldapfilter = importlib.import_module("ldaptor.ldapfilter")
InvalidLDAPFilter: type[Exception] = _ldapfilter.InvalidLDAPFilter
parseFilter: Callable[[str], Any] = _ldapfilter.parseFilter


_SCHEMES = {"ldap": 389, "ldaps": 636}

_FILTER_ESCAPES = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\x00": r"\00"}


def escape_filter_value(value: str) -> str:
    """``value`` as a literal in an LDAP filter (RFC 4515): ``* ( ) \\ NUL`` escaped as hex
    pairs, so a user name can only ever be compared, never add a wildcard or a clause.
    Other characters, non-ASCII included, go to the server as their UTF-8."""
    return "".join(_FILTER_ESCAPES.get(char, char) for char in value)


def fill(template: str, placeholder: str, value: str) -> str:
    """``template`` with ``{placeholder}`` replaced; other braces in the filter left alone."""
    return template.replace("{" + placeholder + "}", value)


def _check_filter(template: str, placeholder: str, option: str) -> None:
    if "{" + placeholder + "}" not in template:
        raise ValueError(f"the {option} {template!r} does not contain {{{placeholder}}}")
    try:
        parseFilter(fill(template, placeholder, "x"))
    except InvalidLDAPFilter:
        raise ValueError(f"the {option} {template!r} is not an LDAP filter (RFC 4515)") from None


def _check_active_filter(text: str) -> None:
    if "{account}" in text or "{dn}" in text:
        raise ValueError(
            f"the directory active filter {text!r} takes no placeholder: it is joined to the "
            "account filter with &"
        )
    try:
        parseFilter(text)
    except InvalidLDAPFilter:
        raise ValueError(f"the directory active filter {text!r} is not an LDAP filter") from None


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    tls: bool
    host: str
    port: int


def _parse_url(url: str) -> Server:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"directory URL {url!r} is not ldap://host:port") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(f"directory URL {url!r} must be ldap://host[:port] or ldaps://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"directory URL {url!r} must name only a host and a port")
    return Server(url, parts.scheme == "ldaps", parts.hostname, port or _SCHEMES[parts.scheme])


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """How to reach the directory and how to find accounts and their groups in it."""

    urls: tuple[str, ...]
    base: str
    starttls: bool = False
    ca_cert: str | None = None
    bind_dn: str | None = None
    bind_password: bytes | None = field(default=None, repr=False)
    filter: str = DEFAULT_FILTER
    active_filter: str | None = None
    """A filter an account's entry must also match to log in or refresh (none: any)."""
    group_attribute: str = DEFAULT_GROUP_ATTRIBUTE
    group_base: str | None = None
    group_filter: str = DEFAULT_GROUP_FILTER
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("give at least one directory URL (ldap://host:port)")
        servers = [_parse_url(url) for url in self.urls]
        if self.starttls and any(server.tls for server in servers):
            raise ValueError("StartTLS applies to ldap:// URLs; ldaps:// is TLS already")
        if not self.base.strip():
            raise ValueError("the directory search base must be a DN")
        _check_filter(self.filter, "account", "directory filter")
        _check_filter(self.group_filter, "dn", "directory group filter")
        if self.active_filter is not None:
            _check_active_filter(self.active_filter)
        if not self.group_attribute.strip():
            raise ValueError("the directory group attribute must not be empty")
        if not self.timeout > 0:
            raise ValueError(f"the directory timeout must be positive, not {self.timeout}")
        if self.bind_password is not None and not self.bind_dn:
            raise ValueError("a directory bind password needs a bind DN")

    @property
    def servers(self) -> tuple[Server, ...]:
        return tuple(_parse_url(url) for url in self.urls)


def read_bind_password(path: str, allow_loose: bool = False) -> bytes:
    """The service account's password from its file (:func:`tokend.secret_files.read_secret`)."""
    return read_secret(path, "bind password file", allow_loose)


def read_ca_certificates(path: str) -> list[x509.Certificate]:
    """The CA certificates of a PEM file (a bundle may hold several); ValueError with a
    sentence that names ``path`` when it cannot be read or holds none."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the directory CA certificate {path}: {e.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"directory CA certificate {path} is not a PEM certificate") from None


def directory_config(options: Layered, allow_loose: bool) -> DirectoryConfig:
    """The directory --ldap-url names (given), from the other --ldap-* options: OptionError
    (UnreadableSecret for the bind password file) says what cannot work, naming the option or
    variable at fault."""
    if not options["ldap-base"]:
        raise OptionError(f"{options.source('ldap-url')} needs --ldap-base (a DN)")
    bind_dn, password_file = options["ldap-bind-dn"], options["ldap-bind-password-file"]
    if bool(bind_dn) != bool(password_file):
        raise OptionError(
            "--ldap-bind-dn and --ldap-bind-password-file go together (without both, "
            "searches are anonymous)"
        )
    try:
        timeout = float(options["ldap-timeout"])
    except ValueError:
        raise OptionError(f"{options.source('ldap-timeout')} must be a number") from None
    if not 0 < timeout <= MAX_TIMEOUT:
        raise OptionError(
            f"{options.source('ldap-timeout')} must be between 0 and {MAX_TIMEOUT:g} s"
        )
    try:
        password = read_bind_password(password_file, allow_loose) if password_file else None
    except ValueError as e:
        raise UnreadableSecret(str(e)) from None
    for dn_option in ("ldap-base", "ldap-bind-dn", "ldap-group-base"):
        if options[dn_option]:
            try:
                normalise_dn(options[dn_option])
            except DNError as e:
                raise OptionError(f"{options.source(dn_option)} is not a DN: {e}") from None
    ca_cert = options["ldap-ca-cert"]
    if ca_cert:
        try:
            read_ca_certificates(ca_cert)
        except ValueError as e:
            raise OptionError(f"{options.source('ldap-ca-cert')}: {e}") from None
    try:
        return DirectoryConfig(
            urls=tuple(options["ldap-url"]),
            base=options["ldap-base"],
            starttls=bool(options["ldap-starttls"]),
            ca_cert=ca_cert or None,
            bind_dn=bind_dn or None,
            bind_password=password,
            filter=options["ldap-filter"],
            active_filter=options["ldap-active-filter"] or None,
            group_attribute=options["ldap-group-attribute"],
            group_base=options["ldap-group-base"] or None,
            group_filter=options["ldap-group-filter"],
            timeout=timeout,
        )
    except ValueError as e:
        raise OptionError(str(e)) from None
