"""The ``--ldap-*`` options, declared once for the daemon and the ``tokend`` tool (checked into a
:class:`~tokend.login.ldap.config.DirectoryConfig` by ``config.directory_config``), without
loading the directory client: ldaptor installs the global reactor when imported.

One rule for the options that only mean something with ``--ldap-url``: without it they are
accepted and ignored with one warning, never refused. The directory's own issue specified
"ignored", and a container may keep its ``TOKEND_LDAP_*`` variables with the URL removed to
turn the directory off.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokend.option_table import Layered, Option

DEFAULT_FILTER = "(&(objectClass=person)(uid={account}))"
DEFAULT_GROUP_ATTRIBUTE = "memberOf"
DEFAULT_GROUP_FILTER = "(&(objectClass=groupOfNames)(member={dn}))"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 300.0

DIRECTORY_OPTIONS = (
    Option(
        "ldap-url",
        "Directory URL (ldap:// or ldaps://); repeat for fail-over",
        repeatable=True,
        metavar="URL",
    ),
    Option("ldap-starttls", "Upgrade ldap:// directory connections with StartTLS", flag=True),
    Option(
        "ldap-ca-cert",
        "PEM CA certificates trusted for LDAPS/StartTLS (else: system)",
        metavar="FILE",
    ),
    Option("ldap-bind-dn", "DN of the service account searching the directory", metavar="DN"),
    Option(
        "ldap-bind-password-file",
        "File holding the service account's password (mode 0600; one trailing newline ignored)",
        metavar="FILE",
    ),
    Option("ldap-base", "DN under which accounts are searched (subtree)", metavar="DN"),
    Option(
        "ldap-filter",
        "Search filter finding an account; {account} is the name, escaped (RFC 4515)",
        DEFAULT_FILTER,
        metavar="FILTER",
    ),
    Option(
        "ldap-active-filter",
        "Filter an account must also match to log in or refresh (e.g. not disabled); "
        "locked ppolicy, nsAccountLock and userAccountControl accounts are refused anyway",
        metavar="FILTER",
    ),
    Option(
        "ldap-group-attribute",
        "Attribute of the account entry listing its group DNs",
        DEFAULT_GROUP_ATTRIBUTE,
        metavar="NAME",
    ),
    Option(
        "ldap-group-base",
        "Find groups by searching under this DN with --ldap-group-filter instead",
        metavar="DN",
    ),
    Option(
        "ldap-group-filter",
        "Filter finding an account's groups under --ldap-group-base; {dn} is the account's DN",
        DEFAULT_GROUP_FILTER,
        metavar="FILTER",
    ),
    Option(
        "ldap-timeout",
        "Seconds for each directory operation",
        str(DEFAULT_TIMEOUT),
        metavar="SECONDS",
    ),
)
"""--ldap-url is repeatable; without it none of the others is used."""

NEEDS_URL = tuple(option.name for option in DIRECTORY_OPTIONS if option.name != "ldap-url")
"""The --ldap-* options that only mean something with --ldap-url."""


def ignored_without_url(given: Sequence[str]) -> str | None:
    """The warning for directory options ``given`` (as their source names them: an option or
    an environment variable) while no --ldap-url names a directory; None when none was."""
    if not given:
        return None
    names = ", ".join(given)
    verb = "is" if len(given) == 1 else "are"
    return f"{names} {verb} ignored: no --ldap-url names a directory to ask"


def ignored(options: Layered) -> str | None:
    """The warning for the other --ldap-* options given while no --ldap-url is."""
    if options["ldap-url"]:
        return None
    return ignored_without_url(
        [options.source(name) for name in NEEDS_URL if name in options.given]
    )
