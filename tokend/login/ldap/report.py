"""What ``tokend check-config`` found in the directory, as the lines it prints."""

from __future__ import annotations

from dataclasses import dataclass

from tokend.login.ldap.entries import LockoutPolicy, lockout_warning


@dataclass(frozen=True, slots=True)
class DirectoryReport:
    """What ``tokend check-config`` found in the directory."""

    url: str
    bind_dn: str | None
    base: str
    accounts: int
    more_accounts: bool
    group_base: str | None = None
    groups: int | None = None
    active_filter: str | None = None
    active: int | None = None
    """Of the accounts counted, those the active filter also matches."""
    policies: tuple[LockoutPolicy, ...] = ()
    """Password policies the service account can read that lock accounts."""

    def lines(self, max_failures: int, window: float) -> list[str]:
        """The report; ``max_failures`` and ``window`` are tokend's own limit per account, set
        against the directory's lockout policies."""
        service = f"bound as {self.bind_dn}" if self.bind_dn else "searches are anonymous"
        counted = f"at least {self.accounts}" if self.more_accounts else str(self.accounts)
        lines = [
            f"directory: {self.url} answered, {service}",
            f"directory: search base {self.base} exists; the filter finds {counted} accounts",
        ]
        if self.active_filter is not None:
            lines.append(
                f"directory: {self.active} of them match the active filter {self.active_filter}"
            )
            if not self.active and self.accounts:
                lines.append(
                    f"warning: directory: the active filter {self.active_filter} matches no "
                    "account, so nobody can log in; an attribute type the directory does not "
                    "know makes (!(type=*)) match nothing"
                )
        if self.group_base is not None:
            lines.append(
                f"directory: group base {self.group_base} exists; {self.groups} groups under it"
            )
        for policy in self.policies:
            warning = lockout_warning(policy, max_failures, window)
            if warning is not None:
                lines.append(f"warning: directory: {warning}")
            else:
                lines.append(
                    f"directory: the password policy {policy.dn} locks an account after "
                    f"{policy.failures} failed binds; tokend's --max-failures-per-account "
                    f"{max_failures} refuses first"
                )
        return lines
