"""Client networks in policy rules: a rule value ``{"actions": [...], "from": [networks]}`` holds
only for clients inside one of them. Parsing the list, and the address a request is judged by.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from tokend.client_address import IPAddress, IPNetwork

MAX_SHOWN_CHARS = 60
"""A bad entry is shown cut short, as tokend.policy.documents shows bad values."""
RULE_KEYS = ("actions", "from")
"""A rule value written as an object: {"actions": [...], "from": [networks]}."""


class Anywhere(Enum):
    """Stands for every client address: which rule decides where each rule applies (the
    policy report asks that, not a request)."""

    ANYWHERE = "anywhere"


ANYWHERE = Anywhere.ANYWHERE
Address = IPAddress | None | Anywhere
"""A request's client address; None when it has none (a UNIX-socket peer naming no client)."""


@dataclass(frozen=True, slots=True)
class FromNetworks:
    """A rule value written as an object: its actions hold only for clients in ``networks``."""

    actions: frozenset[str]
    networks: tuple[IPNetwork, ...]


WrittenRule = frozenset[str] | FromNetworks
"""A rule's value as written: the actions (a list), or the actions and where they hold."""


class NetworkError(ValueError):
    """A ``from`` list that cannot be used; ``index`` is the bad entry's, None for the list."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.index = index


def parse_from(value: object) -> tuple[IPNetwork, ...]:
    """Networks in CIDR notation, or single addresses. A network with host bits set
    (``10.1.2.3/8``) is refused with the network it names: it is most likely a typo."""
    if not isinstance(value, list):
        raise NetworkError(
            'expected a list of client networks, e.g. ["10.0.0.0/8", "2001:db8::/32"]'
        )
    if not value:
        raise NetworkError(
            "empty: the rule would apply from nowhere; give a network, or write the actions "
            "as a list for a rule that holds from everywhere"
        )
    networks: list[IPNetwork] = []
    for index, text in enumerate(value):
        shown = json.dumps(text)
        shown = shown if len(shown) <= MAX_SHOWN_CHARS else shown[: MAX_SHOWN_CHARS - 1] + "…"
        not_network = (
            f"not an IP network: {shown} (write a CIDR network such as "
            '"10.0.0.0/8" or "2001:db8::/32", or one address)'
        )
        if not isinstance(text, str):
            raise NetworkError(not_network, index)
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError:
            try:
                meant = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise NetworkError(not_network, index) from None
            raise NetworkError(
                f'{shown} has host bits set: did you mean "{meant}"?', index
            ) from None
    return tuple(networks)


def networks_text(networks: Iterable[IPNetwork]) -> str:
    """Networks as an operator writes them: one address without its ``/32``."""
    return ", ".join(
        str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in networks
    )
