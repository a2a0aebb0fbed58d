"""``tokend check-config``'s look at each trust of issuers.json: its discovery document and key
set fetched as the daemon would (same client, same checks) and what was found reported: the
key set's URL, how long it is kept, and each key's kid, algorithm and type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from tokend.cli.common import CommandError
from tokend.login.federation.fetch import FetchFailed
from tokend.login.federation.issuer_keys import IssuerKeys
from tokend.login.federation.verify import usable_algorithms
from tokend.policy.model import Policy
from tokend.policy.trusts import trusts_of

T = TypeVar("T")

USABLE = "RSA, EC P-256/P-384/P-521 or OKP Ed25519/Ed448 for RS/PS/ES 256-512 or EdDSA"


def describe_key(jwk: Mapping[str, Any]) -> str:
    """``kid ALG (TYPE SIZE)``: a published key as check-config shows it."""
    kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else "(no kid)"
    kty = jwk.get("kty")
    usable = usable_algorithms(jwk)
    if kty == "RSA" and isinstance(jwk.get("n"), str):
        kind = f"RSA {_modulus_bits(jwk['n'])} bits"
    elif kty in ("EC", "OKP"):
        kind = f"{kty} {jwk.get('crv')}"
    else:
        kind = str(kty)
    if not usable:
        return f"{kid} {kind} (not usable)"
    return f"{kid} {'/'.join(usable)} ({kind})"


def _modulus_bits(modulus: str) -> int:
    from base64 import urlsafe_b64decode

    try:
        raw = urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except ValueError:
        return 0
    return int.from_bytes(raw, "big").bit_length()


async def trust_lines(policy: Policy, reactor: Any) -> list[str]:
    """One line per trust (and a warning for one whose keys cannot be had or used)."""
    from tokend.web.issuer_fetch import AgentFetch

    keys = IssuerKeys(reactor, AgentFetch(reactor), reactor.seconds)
    lines: list[str] = []
    for name, trust in sorted(trusts_of(policy).items()):
        try:
            found = await keys.find(trust)
        except FetchFailed as e:
            lines.append(
                f"warning: trust {name}: its keys cannot be fetched: {e.reason}; its tokens "
                "are refused with 503 until they can"
            )
            continue
        discovery = f" (discovery {trust.discovery_url})" if trust.discovery_url else ""
        published = [jwk for jwk in found.keys["keys"] if isinstance(jwk, dict)]
        lines.append(
            f"trust {name}: keys from {found.jwks_uri}{discovery}, kept {found.max_age} s: "
            + ", ".join(describe_key(jwk) for jwk in published)
        )
        if not any(usable_algorithms(jwk) for jwk in published):
            lines.append(
                f"warning: trust {name}: no key of its issuer is one tokend verifies with "
                f"({USABLE})"
            )
    return lines


def on_reactor(work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(reactor)``'s answer, the global reactor running until it comes (once per
    process, as :func:`tokend.cli.directory_options.ask_directory`; every fetch is bounded
    by its timeouts, so this ends)."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    reactor: Any = global_reactor
    outcome: list[Any] = []

    def finish(result: object) -> None:
        outcome.append(result)
        reactor.callLater(0, reactor.stop)

    async def run() -> T:
        return await work(reactor)

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()).addBoth(finish))
    reactor.run()
    if not outcome:
        raise CommandError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    answer: T = result
    return answer
