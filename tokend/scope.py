"""Parsing of the ``scope`` parameter, following the registry token grammar exactly.

The name may hold a registry host with a port, so the type is split at the first ``:`` and the
actions at the last.  Resource classes (``repository(plugin)``) are deprecated: the class is
dropped here so it can never be echoed back into a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_NAME_LENGTH = 255
"""distribution's limit on a repository name (``NameTotalLengthMax``)."""

MAX_SCOPES = 64
"""How many resource scopes one request may ask for; real clients ask for one to three."""

MAX_SCOPE_LENGTH = 1024

_TYPE = re.compile(r"([a-z0-9]+)(?:\([a-z0-9]+\))?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = re.compile(rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_ACTION = re.compile(r"[a-z]*|\*")


class ScopeError(ValueError):
    """A scope that does not follow the grammar; the message names it."""

    def __init__(self, scope: str, reason: str) -> None:
        super().__init__(f"invalid scope {scope[:100]!r}: {reason}")
        self.scope = scope
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One ``type:name:actions`` resource scope."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a repository name as the grammar defines it."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def parse_scope(text: str) -> ResourceScope:
    """Parse one resource scope, raising :class:`ScopeError` when it is malformed."""
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError(text, f"longer than {MAX_SCOPE_LENGTH} characters")
    type_part, sep, rest = text.partition(":")
    name, sep2, action_part = rest.rpartition(":")
    if not sep or not sep2 or not name:
        raise ScopeError(text, "expected type:name:actions")
    type_match = _TYPE.fullmatch(type_part)
    if type_match is None:
        raise ScopeError(text, f"bad resource type {type_part!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ScopeError(text, f"name longer than {MAX_NAME_LENGTH} characters")
    if _NAME.fullmatch(name) is None:
        raise ScopeError(text, f"bad resource name {name!r}")
    actions: list[str] = []
    for action in action_part.split(","):
        if _ACTION.fullmatch(action) is None:
            raise ScopeError(text, f"bad action {action!r}")
        if action and action not in actions:
            actions.append(action)
    return ResourceScope(type_match.group(1), name, tuple(actions))


def parse_scopes(values: Iterable[str]) -> tuple[ResourceScope, ...]:
    """Parse every scope of a request: repeated parameters, each possibly space-separated.

    Scopes naming the same resource are merged, so the token holds one entry per resource.
    """
    merged: dict[tuple[str, str], list[str]] = {}
    count = 0
    for value in values:
        for text in value.split(" "):
            if not text:
                continue
            count += 1
            if count > MAX_SCOPES:
                raise ScopeError(text, f"more than {MAX_SCOPES} scopes in one request")
            scope = parse_scope(text)
            actions = merged.setdefault((scope.type, scope.name), [])
            actions.extend(a for a in scope.actions if a not in actions)
    return tuple(ResourceScope(t, n, tuple(a)) for (t, n), a in merged.items())
