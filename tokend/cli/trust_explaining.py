"""``tokend explain --trust NAME --claims FILE``: what a platform's token with those claims
would log in as under one trust of issuers.json, whether its conditions hold, and the claim
values its rules are bound to. The scopes are then explained as for any account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from tokend.cli.common import CommandError
from tokend.login.identity import FEDERATED_SOURCE, Identity
from tokend.policy.claims import Condition, is_safe_path
from tokend.policy.model import FEDERATED, Policy, UserPolicy
from tokend.policy.trusts import ISSUERS_FILE, Trust, trusts_of

MAX_CLAIMS_BYTES = 1024 * 1024


def trust_identity(
    policy: Policy, name: str, claims_file: str, stdout: TextIO
) -> tuple[Identity, UserPolicy | None]:
    """The identity a token with the claims in ``claims_file`` would be, its lines written
    on the way; CommandError when no login would come of it."""
    trust = trusts_of(policy).get(name)
    if trust is None:
        known = ", ".join(policy.trusts) or f"none: there is no {ISSUERS_FILE} or it is empty"
        raise CommandError(f"no trust {name!r} in {ISSUERS_FILE} (trusts: {known})")
    claims = _read_claims(Path(claims_file))
    stdout.write(f"trust {trust.name}: iss {trust.issuer}, aud {trust.audience}\n")
    for line in _notes(trust, claims):
        stdout.write(line + "\n")
    for condition in trust.conditions:
        stdout.write(_condition(condition, claims) + "\n")
    if not trust.admits(claims):
        raise CommandError(
            f"a token with these claims is refused: not every condition of trust {name!r} holds"
        )
    account = trust.account_for(claims)
    if account is None:
        raise CommandError(
            f"a token with these claims is refused: the account {trust.account.text} names a "
            "claim that is missing or not a string (or makes an empty, unprintable or too long "
            "name)"
        )
    stdout.write(f"account: {account!r} ({trust.account.text})\n")
    values = trust.claim_values(claims)
    for path, value in values:
        unsafe = (
            ""
            if is_safe_path(value)
            else " is no repository path: the rules naming it match nothing"
        )
        stdout.write(f"claim {path}: {value!r}{unsafe}\n")
    who = Identity(
        account,
        FEDERATED_SOURCE,
        rights_from=FEDERATED,
        trust=trust.name,
        claim_values=values,
        expires_at=claims.get("exp") if isinstance(claims.get("exp"), int | float) else None,
    )
    return who, policy.rights(who)


def identity_tokens(trust: Trust) -> str:
    """What a federated login gets beside its access token: no refresh token, and how long."""
    ttl = f"{trust.token_ttl} s (token_ttl), " if trust.token_ttl is not None else ""
    return (
        f"identity tokens: a token of trust {trust.name} gets no refresh token (the platform "
        f"gives the job a fresh one each time); an access token lasts at most {ttl}--token-ttl "
        "and until the platform's token expires\n"
    )


def _read_claims(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_CLAIMS_BYTES + 1)
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_CLAIMS_BYTES:
        raise CommandError(f"{path}: larger than {MAX_CLAIMS_BYTES} bytes: no token's claims")
    try:
        claims = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CommandError(f"{path}: not JSON: {e}") from None
    if not isinstance(claims, dict):
        raise CommandError(f"{path}: expected a JSON object of claims (a token's payload)")
    return claims


def _notes(trust: Trust, claims: dict[str, Any]) -> list[str]:
    """What a real token would be refused for before the conditions are looked at."""
    notes = []
    if "iss" in claims and claims["iss"] != trust.issuer:
        notes.append(
            f"note: iss {claims['iss']!r} is not this trust's issuer: a real token would be refused"
        )
    aud = claims.get("aud")
    if aud is not None and trust.audience not in ([aud] if isinstance(aud, str) else aud):
        notes.append(
            f"note: aud {aud!r} does not hold {trust.audience!r}: a real token would be refused"
        )
    return notes


def _condition(condition: Condition, claims: dict[str, Any]) -> str:
    wanted = " or ".join(repr(value) for value in condition.values)
    value = condition.path.find(claims)
    shown = "missing or not a string," if value is None else repr(value)
    verdict = "holds" if condition.holds(claims) else "fails"
    return f"condition {condition.path.text}: {shown} {verdict} ({wanted})"
