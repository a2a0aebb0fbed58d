"""issuers.json: the platforms (CI, Kubernetes) whose signed OpenID Connect tokens log in.

Each named trust says which issuer and audience it takes, where their keys are, which claims a
token must carry, the account it becomes and the rights it holds. Parsed here into
:class:`Trust` values; verifying a token's signature is tokend.login.federation's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

from tokend.policy.claims import (
    SUBJECT,
    ClaimPathError,
    Condition,
    Template,
    claim_path,
    template,
)
from tokend.policy.documents import (
    _actions,
    _check_name,
    _from_networks,
    _optional_bool,
    _rule,
    json_path,
    shown,
    unknown_key,
)
from tokend.policy.model import (
    GroupPolicy,
    Policy,
    PolicyError,
    Source,
    UserPolicy,
    may_list_catalog,
)
from tokend.policy.networks import WrittenRule
from tokend.policy.rules import (
    EMPTY_RULES,
    AmbiguousRules,
    PatternError,
    Rule,
    RuleSet,
    bind,
    build_rule_set,
    compile_pattern,
)

ISSUERS_FILE = "issuers.json"
TRUST_KEYS = (
    "issuer",
    "audience",
    "jwks_uri",
    "jwks_file",
    "ca_file",
    "conditions",
    "account",
    "groups",
    "rules",
    "catalog",
    "token_ttl",
    "max_token_age",
)
DISCOVERY_PATH = "/.well-known/openid-configuration"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""The only hosts a key URL may name over plain HTTP (tests, a sidecar): elsewhere a URL a
token's keys come from is ``https://``."""
MAX_ACCOUNT_LENGTH = 255
MAX_SECONDS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Trust:
    """One issuer and audience whose tokens log in, what they must claim, and what they get.

    Equality compares what was written, so a reload can tell which trusts changed.
    """

    name: str
    issuer: str
    audience: str
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    ca_file: Path | None = None
    groups: tuple[str, ...] = ()
    token_ttl: int | None = None
    max_token_age: int | None = None
    conditions: tuple[Condition, ...] = ()
    account: Template = SUBJECT
    rules: Mapping[str, WrittenRule] = field(default_factory=lambda: MappingProxyType({}))
    catalog: bool | None = None
    static: RuleSet = field(default=EMPTY_RULES, compare=False, repr=False)
    """The rules without placeholders, compiled at load."""
    templates: tuple[tuple[Template, WrittenRule], ...] = field(
        default=(), compare=False, repr=False
    )
    """The rules with placeholders, bound per token by :meth:`member`."""

    @property
    def discovery_url(self) -> str | None:
        """Where the keys are found when neither ``jwks_uri`` nor ``jwks_file`` says."""
        if self.jwks_uri is not None or self.jwks_file is not None:
            return None
        return self.issuer.rstrip("/") + DISCOVERY_PATH

    def admits(self, claims: Mapping[str, Any]) -> bool:
        """Whether every condition holds for a (verified) token's claims."""
        return all(condition.holds(claims) for condition in self.conditions)

    def account_for(self, claims: Mapping[str, Any]) -> str | None:
        """The account a token with these claims logs in as; None when a claim it names is
        missing or not a string, or the name is empty, too long or not printable."""
        values = dict(self.claim_values(claims))
        account = self.account.fill(None, values, safe=False)
        if not account or len(account) > MAX_ACCOUNT_LENGTH or not account.isprintable():
            return None
        return account

    def claim_values(self, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """Each claim path the account and the rules name, with its value in these claims
        (string values only): what an identity carries for :meth:`member`."""
        paths = {path.text: path for path in self.account.claims}
        for key, _ in self.templates:
            paths.update((path.text, path) for path in key.claims)
        found = ((text, path.find(claims)) for text, path in sorted(paths.items()))
        return tuple((text, value) for text, value in found if value is not None)

    def member(
        self,
        groups: Mapping[str, GroupPolicy],
        account: str,
        claim_values: tuple[tuple[str, str], ...],
    ) -> UserPolicy:
        """The rights of ``account`` vouched for with ``claim_values``: the trust's rules with
        the placeholders bound, then its groups' rules with ``${account}`` bound.

        A rule whose claim value is no repository path matches nothing; rules that tie once
        bound make the trust's own rules grant nothing, as a group whose rules tie for a
        member grants that member nothing.
        """
        sources = [Source(f"trust {self.name}", self._own_rules(account, dict(claim_values)))]
        names: list[str] = []
        for name in self.groups:
            group = groups[name]
            try:
                bound = bind(group.rules, account)
            except AmbiguousRules:
                continue
            names.append(name)
            sources.append(Source(group.source.name, group.rules, bound) if bound else group.source)
        catalogs = [groups[name].catalog for name in names]
        return UserPolicy(
            b"",
            self.rules,
            tuple(names),
            self.catalog,
            tuple(sources),
            may_list_catalog(self.catalog, catalogs),
        )

    def _own_rules(self, account: str, values: Mapping[str, str]) -> RuleSet:
        if not self.templates:
            return self.static
        rules = list(self.static.rules())
        keys = set(self.static.exact)
        for key, written in self.templates:
            filled = key.fill(account, values, safe=True)
            if filled is None:
                continue
            try:
                rule = _rule(compile_pattern(filled), written)
            except PatternError:
                continue  # too long once filled in: it names no repository
            if rule.pattern.exact:
                if filled in keys:
                    return EMPTY_RULES
                keys.add(filled)
            rules.append(rule)
        try:
            return build_rule_set(rules)
        except AmbiguousRules:
            return EMPTY_RULES


def trusts_from_document(
    document: object,
    file: str,
    config_dir: Path,
    groups: Mapping[str, GroupPolicy],
    users: Mapping[str, UserPolicy],
) -> Mapping[str, Trust]:
    """Validate a parsed issuers.json: ``{"trusts": {name: trust}}``."""
    if not isinstance(document, dict):
        raise PolicyError(file, "", 'expected an object: {"trusts": {NAME: {...}}}')
    for key in document:
        if key != "trusts":
            raise PolicyError(file, json_path(key), unknown_key(key, ("trusts",)))
    entries = document.get("trusts", {})
    if not isinstance(entries, dict):
        raise PolicyError(file, "trusts", "expected an object mapping trust names to trusts")
    folded = {name.casefold(): name for name in users}
    trusts: dict[str, Trust] = {}
    taken: dict[tuple[str, str], str] = {}
    for name, entry in entries.items():
        _check_name(name, file, "trust")
        where = ("trusts", name)
        user = folded.get(name.casefold())
        if user is not None:
            raise PolicyError(
                file,
                json_path(*where),
                f"users.json holds the account {user!r}: a trust's name is what a job logs in "
                "as (TRUST:JWT), so it must not be an account's",
            )
        trust = _trust(name, entry, file, where, config_dir, groups)
        other = taken.setdefault((trust.issuer, trust.audience), name)
        if other != name:
            raise PolicyError(
                file,
                json_path(*where),
                f"trust {other!r} has the same issuer and audience: a token could not tell "
                "which of the two it is for",
            )
        trusts[name] = trust
    return MappingProxyType(trusts)


def _trust(
    name: str,
    entry: object,
    file: str,
    where: tuple[str, ...],
    config_dir: Path,
    groups: Mapping[str, GroupPolicy],
) -> Trust:
    if not isinstance(entry, dict):
        raise PolicyError(file, json_path(*where), "expected an object")
    for key in entry:
        if key not in TRUST_KEYS:
            raise PolicyError(file, json_path(*where, key), unknown_key(key, TRUST_KEYS))
    for key in ("issuer", "audience", "account", "conditions"):
        if key not in entry:
            raise PolicyError(file, json_path(*where), f'a trust needs "{key}"{_NEEDS[key]}')
    jwks_file = _optional_file(entry, "jwks_file", file, where, config_dir)
    ca_file = _optional_file(entry, "ca_file", file, where, config_dir)
    issuer = _string(entry, "issuer", file, where)
    jwks_uri = entry.get("jwks_uri")
    if jwks_file is not None:
        if jwks_uri is not None:
            raise PolicyError(
                file, json_path(*where, "jwks_uri"), "give jwks_uri or jwks_file, not both"
            )
        if ca_file is not None:
            raise PolicyError(
                file,
                json_path(*where, "ca_file"),
                "the keys come from jwks_file: nothing is fetched, so no CA is needed",
            )
    else:
        _check_url(issuer, file, json_path(*where, "issuer"), issuer=True)
    if jwks_uri is not None:
        jwks_uri = _string(entry, "jwks_uri", file, where)
        _check_url(jwks_uri, file, json_path(*where, "jwks_uri"), issuer=False)
    account = _account(entry["account"], file, json_path(*where, "account"))
    static, templates, written = _rules(entry.get("rules", {}), file, (*where, "rules"))
    return Trust(
        name=name,
        issuer=issuer,
        audience=_string(entry, "audience", file, where),
        jwks_uri=jwks_uri,
        jwks_file=jwks_file,
        ca_file=ca_file,
        groups=_groups(entry.get("groups", []), file, (*where, "groups"), groups),
        token_ttl=_seconds(entry, "token_ttl", file, where),
        max_token_age=_seconds(entry, "max_token_age", file, where),
        conditions=_conditions(entry["conditions"], file, (*where, "conditions")),
        account=account,
        rules=MappingProxyType(written),
        catalog=_optional_bool(entry, "catalog", file, where),
        static=static,
        templates=templates,
    )


_NEEDS = {
    "issuer": ' (the exact "iss" of its tokens, e.g. https://token.actions.githubusercontent.com)',
    "audience": ' (a value its tokens\' "aud" must hold, e.g. https://registry.example.com)',
    "account": ' (the account a token becomes, e.g. "github:${claim.repository}")',
    "conditions": (
        ' (claims every token must hold, e.g. {"repository_owner": "acme"}): without one, '
        "every token the issuer signs for this audience would log in, other owners' included"
    ),
}


def _string(entry: dict[str, object], key: str, file: str, where: tuple[str, ...]) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise PolicyError(
            file, json_path(*where, key), f"expected a non-empty string, not {shown(value)}"
        )
    return value


def _check_url(url: str, file: str, path: str, issuer: bool) -> None:
    """An ``https://`` URL (``http://`` only to the loopback host); an issuer has neither
    query nor fragment (OpenID Connect Discovery 1.0, section 4)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or not host or parts.scheme not in ("https", "http"):
        raise PolicyError(file, path, f"expected an https:// URL, not {shown(url)}")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise PolicyError(
            file, path, "keys are fetched over https:// only (http:// to 127.0.0.1 or localhost)"
        )
    if issuer and (parts.query or parts.fragment):
        raise PolicyError(file, path, "an issuer URL has no query or fragment")


def _optional_file(
    entry: dict[str, object], key: str, file: str, where: tuple[str, ...], config_dir: Path
) -> Path | None:
    """A file named relative to the config directory, which must be there now."""
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise PolicyError(file, json_path(*where, key), f"expected a file name, not {shown(value)}")
    path = config_dir / value
    if not path.is_file():
        raise PolicyError(file, json_path(*where, key), f"no such file: {path}")
    return path


def _seconds(entry: dict[str, object], key: str, file: str, where: tuple[str, ...]) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SECONDS:
        raise PolicyError(
            file,
            json_path(*where, key),
            f"expected a number of seconds above 0, not {shown(value)}",
        )
    return value


def _account(value: object, file: str, path: str) -> Template:
    if not isinstance(value, str) or not value:
        raise PolicyError(file, path, f"expected a non-empty string, not {shown(value)}")
    try:
        account = template(value, account_allowed=False)
    except ClaimPathError as e:
        raise PolicyError(file, path, str(e)) from None
    if account.literal:
        raise PolicyError(
            file,
            path,
            "the account names no claim: every job would log in as one account "
            '(e.g. "github:${claim.repository}")',
        )
    return account


def _groups(
    value: object, file: str, where: tuple[str, ...], groups: Mapping[str, GroupPolicy]
) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(file, json_path(*where), "expected a list of group names")
    names: list[str] = []
    for index, name in enumerate(value):
        if not isinstance(name, str) or name not in groups:
            raise PolicyError(
                file, json_path(*where, index), f"no group {shown(name)} in groups.json"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _conditions(value: object, file: str, where: tuple[str, ...]) -> tuple[Condition, ...]:
    if not isinstance(value, dict) or not value:
        raise PolicyError(
            file,
            json_path(*where),
            "expected an object of claims and the values they must hold, e.g. "
            '{"repository_owner": "acme", "ref": ["refs/heads/main", "refs/tags/*"]}',
        )
    conditions: list[Condition] = []
    for key, wanted in value.items():
        try:
            path = claim_path(key)
        except ClaimPathError as e:
            raise PolicyError(file, json_path(*where, key), str(e)) from None
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise PolicyError(
                file,
                json_path(*where, key),
                f"expected a non-empty string (a glob with *) or a list of them, not "
                f"{shown(wanted)}",
            )
        conditions.append(Condition(path, tuple(values)))
    return tuple(conditions)


_STAND_IN = "a"
"""What a placeholder is replaced with to check that a rule key could name a repository."""


def _rules(
    value: object, file: str, where: tuple[str, ...]
) -> tuple[RuleSet, tuple[tuple[Template, WrittenRule], ...], dict[str, WrittenRule]]:
    """users.json-like rules whose keys may hold ``${account}`` and ``${claim.PATH}``: those
    without a placeholder compiled now, the others kept to be bound per token."""
    if not isinstance(value, dict):
        raise PolicyError(file, json_path(*where), "expected an object")
    written: dict[str, WrittenRule] = {}
    static: list[Rule] = []
    templates: list[tuple[Template, WrittenRule]] = []
    for key, rule in value.items():
        path = json_path(*where, key)
        try:
            parsed = template(key, account_allowed=True)
            stand_in = "".join(p if isinstance(p, str) else _STAND_IN for p in parsed.parts)
            pattern = compile_pattern(stand_in)
        except (ClaimPathError, PatternError) as e:
            raise PolicyError(file, path, str(e)) from None
        if isinstance(rule, dict):
            written[key] = _from_networks(rule, file, (*where, key))
        else:
            written[key] = _actions(rule, file, where, key)
        if parsed.literal:
            static.append(_rule(pattern, written[key]))
        else:
            templates.append((parsed, written[key]))
    try:
        rule_set = build_rule_set(static)
    except AmbiguousRules as e:
        raise PolicyError(file, json_path(*where, e.second), str(e)) from None
    return rule_set, tuple(templates), written


def trusts_of(policy: Policy) -> Mapping[str, Trust]:
    """The policy's trusts as issuers.json built them: every one is a :class:`Trust` (the
    policy holds them as :class:`tokend.policy.model.TrustRights`, what it reads of them)."""
    return cast("Mapping[str, Trust]", policy.trusts)


def trust_for(policy: Policy, iss: str, aud: str | Sequence[str]) -> Trust | None:
    """:meth:`tokend.policy.model.Policy.trust_for`, as the :class:`Trust` it is."""
    return cast("Trust | None", policy.trust_for(iss, aud))
