"""The example accounts config/users.json ships (foo/foo pulls, bar/bar pushes and pulls
everything), recognised by their exact hashes, kept here and nowhere else.

They let the README's first command work as it is; anyone who has read the README can log in
with them. So a daemon refuses to start, or to reload, with them unless it is plainly a
development daemon (``--dev-cert``), and then it says so loudly.
"""

from __future__ import annotations

from pathlib import Path
from threading import Event

from tokend.policy.files import USERS_FILE, LoadedPolicy, Loader
from tokend.policy.model import Policy, PolicyError

EXAMPLE_HASHES = {
    "foo": "$2b$12$TcJ9WvXgSWYvpPKhiHM/n.K22azW0/mm.AUTk7d0RvAkbgPhtmySy",
    "bar": "$2b$12$M6krVZ4vCtsnDDdY8QgK/.NxjVMeqlvXO3B4cgz8L.ldnuGe40Sc6",
}
"""Account → ``pass_hash`` exactly as config/users.json holds it (the password is the name)."""

_SHIPPED = frozenset(value.encode("ascii") for value in EXAMPLE_HASHES.values())


def example_accounts(policy: Policy) -> tuple[str, ...]:
    """The users (whatever their names) whose hash is one of the shipped examples'."""
    return tuple(sorted(name for name, user in policy.users.items() if user.pass_hash in _SHIPPED))


def example_accounts_error(config_dir: Path, names: tuple[str, ...]) -> PolicyError:
    """One sentence: which file, which accounts, and what to do instead."""
    return PolicyError(
        str(config_dir / USERS_FILE),
        "",
        f"{', '.join(names)} have the example passwords shipped with tokend, which anyone can "
        "look up; write your own users.json with tokend hash-password, or pass --dev-cert to "
        "run a development daemon",
    )


def refusing_examples(load: Loader) -> Loader:
    """``load``, refusing (as a broken file is refused) a policy with example accounts."""

    def checked(config_dir: Path, stop: Event | None = None) -> LoadedPolicy:
        loaded = load(config_dir, stop)
        names = example_accounts(loaded.policy)
        if names:
            raise example_accounts_error(config_dir, names)
        return loaded

    return checked
