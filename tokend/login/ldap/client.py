"""Directory accounts: who someone is, asked of an LDAP server (OpenLDAP, Active Directory).

A login searches the account under the base DN with the service account, then binds as the
entry it found with the given password, on a connection of its own. ldaptor speaks LDAP on the
reactor (no thread per request, no blocking call); every operation is bounded by the configured
timeout, and anything that keeps the directory from answering (refused, unreachable, timed out,
TLS failure, the service account refused) is :class:`DirectoryUnavailable`, which the web layer
answers with 503 rather than 401: an outage must not look like a wrong password.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tokend.dn import normalise_dn
from tokend.login.identity import OPEN_GATE, EntryGate, UnfitName, directory_name
from tokend.login.ldap.config import DirectoryConfig, InvalidLDAPFilter, escape_filter_value, fill
from tokend.login.ldap.connections import (
    INVALID_CREDENTIALS,
    NO_ATTRIBUTES,
    NO_SUCH_OBJECT,
    SIZE_LIMIT_EXCEEDED,
    SUCCESS,
    Connection,
    DirectoryConnections,
    DirectoryUnavailable,
    Entry,
    close,
    result_text,
)
from tokend.login.ldap.entries import (
    POLICY_ATTRIBUTES,
    POLICY_FILTER,
    STATE_ATTRIBUTES,
    EntryState,
    LockoutPolicy,
    entry_state,
    lockout_policy,
)
from tokend.login.ldap.report import DirectoryReport
from tokend.logs.escaping import printable
from tokend.logs.namespaces import NamedLogger

_CHECK_SIZE_LIMIT = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DirectoryAccount:
    """A directory entry that matched a login: its DN, the (normalised) DNs of its groups, and
    what its operational attributes say (its stable id, when its password changed)."""

    dn: str
    groups: frozenset[str]
    state: EntryState = field(default=EntryState(), compare=False)


def _plausible(account: str) -> bool:
    """Whether ``account`` may be looked up at all. The directory's matching rules ignore
    leading and trailing spaces (``" mozart"`` finds mozart) and read a fullwidth m as m,
    so such spellings (:func:`tokend.login.identity.directory_name`) are refused before any
    traffic: one person, one login name. Case is the directory's to ignore."""
    try:
        directory_name(account)
    except UnfitName:
        return False
    return True


class Directory:
    """Accounts and their groups in an LDAP directory, asked without blocking the reactor.

    One service-account connection serves every search (rebuilt when it breaks); each login's
    password bind gets a short-lived connection of its own, so a user's bind can never change
    what the shared connection is allowed to see. An outage is logged when it starts and when
    it ends, not once per request.
    """

    log = NamedLogger("tokend.login.directory.Directory")

    def __init__(self, config: DirectoryConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        self._connections = DirectoryConnections(config, reactor)
        self._outage: str | None = None

    # -- the public questions -------------------------------------------------------------

    async def authenticate(
        self, account: str, password: bytes, gate: EntryGate = OPEN_GATE
    ) -> DirectoryAccount | None:
        """The account's entry and groups when ``password`` is its password; None otherwise.

        An empty password is refused here, before the directory is asked: LDAP treats a bind
        with a DN and no password as an anonymous bind, which many servers let succeed.
        ``gate`` is asked about the entry found, before the password is tried on it.
        """
        if not password or not _plausible(account):
            return None
        return await self._tracked(self._authenticate(account, password, gate))

    async def lookup(self, account: str) -> DirectoryAccount | None:
        """The account's entry and groups, without a password (refresh tokens, ``explain``)."""
        if not _plausible(account):
            return None
        return await self._tracked(
            self._connections.with_service(lambda c: self._account(c, account))
        )

    async def check(self) -> DirectoryReport:
        """Bind the service account, read the bases, count accounts: for ``check-config``."""
        return await self._tracked(self._connections.with_service(self._check))

    async def missing(self, dns: Iterable[str]) -> list[str]:
        """Which of these DNs name no entry the service account can read: for ``check-config``,
        so that a typo in groups.json's ldap_groups is reported instead of matching nobody."""

        async def absent(connection: Connection) -> list[str]:
            gone = []
            for dn in dns:
                _, code, message = await self._connections.search(
                    connection, dn, "(objectClass=*)", NO_ATTRIBUTES, 1, scope="base"
                )
                if code == NO_SUCH_OBJECT:
                    gone.append(dn)
                else:
                    self._require_success(code, message, connection, dn)
            return gone

        return await self._tracked(self._connections.with_service(absent))

    def close(self) -> None:
        """Drop the service connection (at service stop)."""
        self._connections.close()

    # -- logins and searches --------------------------------------------------------------

    async def _authenticate(
        self, account: str, password: bytes, gate: EntryGate
    ) -> DirectoryAccount | None:
        found = await self._connections.with_service(lambda c: self._find(c, account))
        if found is None:
            return None
        entry, url = found
        if not self._active(entry, account):
            return None
        await gate.admit(entry.dn)
        connection, code, message = await self._connections.bind(entry.dn, password, prefer=url)
        close(connection.client)
        if code == INVALID_CREDENTIALS:
            return None
        if code != SUCCESS:
            self.log.info(
                "directory refused the login of {account}: {reason}",
                account=printable(account),
                reason=result_text(code, message),
            )
            return None
        groups = await self._connections.with_service(lambda c: self._groups(c, entry))
        return DirectoryAccount(entry.dn, groups, entry_state(entry.attributes))

    async def _account(self, connection: Connection, account: str) -> DirectoryAccount | None:
        found = await self._find(connection, account)
        if found is None:
            return None
        entry, _ = found
        if not self._active(entry, account):
            return None
        groups = await self._groups(connection, entry)
        return DirectoryAccount(entry.dn, groups, entry_state(entry.attributes))

    def _active(self, entry: Entry, account: str) -> bool:
        """Whether the entry may log in: not locked or disabled by the attributes OpenLDAP
        ppolicy, 389-DS and AD lock with (the active filter was part of the search)."""
        inactive = entry_state(entry.attributes).inactive
        if inactive is not None:
            self.log.info(
                "directory: account {account} is {inactive}; refused",
                account=printable(account),
                inactive=inactive,
            )
        return inactive is None

    async def _find(self, connection: Connection, account: str) -> tuple[Entry, str] | None:
        """The one entry the filter finds for ``account`` under the base, or None."""
        config = self._config
        text = self._account_filter(escape_filter_value(account))
        attributes = list(STATE_ATTRIBUTES)
        if config.group_base is None:
            attributes.append(config.group_attribute)
        # Two is enough to tell "one" from "several", and spares the directory a long answer.
        try:
            entries, code, message = await self._connections.search(
                connection, config.base, text, attributes, 2
            )
        except InvalidLDAPFilter:
            self.log.warn(
                "directory: the filter with account {account} is not a filter; login refused",
                account=printable(account),
            )
            return None
        if code == SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            self.log.warn(
                "directory: several entries match account {account} ({dns}); login refused",
                account=printable(account),
                dns=", ".join(printable(entry.dn) or "" for entry in entries),
            )
            return None
        self._require_success(code, message, connection, config.base)
        return (entries[0], connection.url) if entries else None

    async def _groups(self, connection: Connection, entry: Entry) -> frozenset[str]:
        config = self._config
        if config.group_base is None:
            values = entry.attributes.get(config.group_attribute.lower(), [])
        else:
            text = fill(config.group_filter, "dn", escape_filter_value(entry.dn))
            entries, code, message = await self._connections.search(
                connection, config.group_base, text, NO_ATTRIBUTES, 0
            )
            self._require_success(code, message, connection, config.group_base)
            values = [group.dn for group in entries]
        groups = set()
        for value in values:
            try:
                groups.add(normalise_dn(value))
            except ValueError:
                self.log.warn(
                    "directory: group {group} of {dn} is not a DN; ignored",
                    group=printable(value),
                    dn=printable(entry.dn),
                )
        return frozenset(groups)

    def _account_filter(self, value: str) -> str:
        """The search for an account: the filter with ``value``, and the active filter."""
        text = fill(self._config.filter, "account", value)
        active = self._config.active_filter
        return text if active is None else f"(&{text}{active})"

    async def _count(self, connection: Connection, base: str, text: str) -> tuple[int, bool]:
        """How many entries (up to the check's bound) a search finds, and whether more."""
        entries, code, message = await self._connections.search(
            connection, base, text, NO_ATTRIBUTES, _CHECK_SIZE_LIMIT
        )
        if code != SIZE_LIMIT_EXCEEDED:
            self._require_success(code, message, connection, base)
        return len(entries), code == SIZE_LIMIT_EXCEEDED

    async def _check(self, connection: Connection) -> DirectoryReport:
        config = self._config
        await self._require_entry(connection, config.base)
        accounts, more = await self._count(
            connection, config.base, fill(config.filter, "account", "*")
        )
        active = None
        if config.active_filter is not None:
            active, _ = await self._count(connection, config.base, self._account_filter("*"))
        groups = None
        if config.group_base is not None:
            await self._require_entry(connection, config.group_base)
            found, group_code, group_message = await self._connections.search(
                connection,
                config.group_base,
                fill(config.group_filter, "dn", "*"),
                NO_ATTRIBUTES,
                _CHECK_SIZE_LIMIT,
            )
            if group_code != SIZE_LIMIT_EXCEEDED:
                self._require_success(group_code, group_message, connection, config.group_base)
            groups = len(found)
        return DirectoryReport(
            url=connection.url,
            bind_dn=config.bind_dn,
            base=config.base,
            accounts=accounts,
            more_accounts=more,
            group_base=config.group_base,
            groups=groups,
            active_filter=config.active_filter,
            active=active,
            policies=await self._lockout_policies(connection),
        )

    async def _lockout_policies(self, connection: Connection) -> tuple[LockoutPolicy, ...]:
        """The password policies under the base's naming context that lock accounts, as far
        as the service account may read them (none found is no finding: they may be hidden)."""
        base = await self._naming_context(connection)
        entries, code, _ = await self._connections.search(
            connection, base, POLICY_FILTER, list(POLICY_ATTRIBUTES), _CHECK_SIZE_LIMIT
        )
        if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED):
            return ()
        found = (lockout_policy(entry.dn, entry.attributes) for entry in entries)
        return tuple(policy for policy in found if policy is not None)

    async def _naming_context(self, connection: Connection) -> str:
        """The naming context (from the root DSE) holding the search base, else the base."""
        config = self._config
        entries, code, _ = await self._connections.search(
            connection, "", "(objectClass=*)", ["namingContexts"], 1, scope="base"
        )
        contexts = entries[0].attributes.get("namingcontexts", []) if entries else []
        base = normalise_dn(config.base)
        for context in contexts if code == SUCCESS else []:
            try:
                normalised = normalise_dn(context)
            except ValueError:
                continue
            if base == normalised or base.endswith("," + normalised):
                return context
        return config.base

    async def _require_entry(self, connection: Connection, base: str) -> None:
        _, code, message = await self._connections.search(
            connection, base, "(objectClass=*)", NO_ATTRIBUTES, 1, scope="base"
        )
        self._require_success(code, message, connection, base)

    @staticmethod
    def _require_success(
        code: int, message: bytes | str | None, connection: Connection, base: str
    ) -> None:
        if code == NO_SUCH_OBJECT:
            raise DirectoryUnavailable(f"{connection.url}: {base} does not exist")
        if code != SUCCESS:
            raise DirectoryUnavailable(
                f"{connection.url}: searching {base} failed: {result_text(code, message)}"
            )

    # -- outages ----------------------------------------------------------------------------

    async def _tracked(self, work: Awaitable[T]) -> T:
        """``work``'s result; an outage is logged when it starts and when it ends, not per
        request."""
        try:
            result = await work
        except DirectoryUnavailable as e:
            if self._outage is None:
                self._outage = str(e)
                self.log.warn("directory unavailable: {reason}", reason=str(e))
            raise
        if self._outage is not None:
            self._outage = None
            self.log.info("directory reachable again")
        return result
