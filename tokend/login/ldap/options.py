"""What the daemon and the ``tokend`` tool agree on about the ``--ldap-*`` options, without
loading the directory client (ldaptor installs the global reactor when imported).

One rule for the options that only mean something with ``--ldap-url``: without it they are
accepted and ignored with one warning, never refused. The directory's own issue specified
"ignored", and a container may keep its ``TOKEND_LDAP_*`` variables with the URL removed to
turn the directory off.
"""

from __future__ import annotations

from collections.abc import Sequence

NEEDS_URL = (
    "ldap-starttls",
    "ldap-ca-cert",
    "ldap-bind-dn",
    "ldap-bind-password-file",
    "ldap-base",
    "ldap-filter",
    "ldap-active-filter",
    "ldap-group-attribute",
    "ldap-group-base",
    "ldap-group-filter",
    "ldap-timeout",
)
"""The --ldap-* options that only mean something with --ldap-url."""


def ignored_without_url(given: Sequence[str]) -> str | None:
    """The warning for directory options ``given`` (as their source names them: an option or
    an environment variable) while no --ldap-url names a directory; None when none was."""
    if not given:
        return None
    names = ", ".join(given)
    verb = "is" if len(given) == 1 else "are"
    return f"{names} {verb} ignored: no --ldap-url names a directory to ask"
