"""What an option is (name, default, help, ``TOKEND_*`` variable, bounds) and how its value is
layered: the command line, else the environment, else the default. Both ``twistd
registry-token`` and the ``tokend`` tool build their parsers from these declarations, so a
name, a default or a bound is written once. Imports nothing of tokend: the core may use it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """Options that cannot work, as one sentence naming the option (or variable) at fault."""


class UnreadableSecret(OptionError):
    """A secret file (a password, a key) that is missing, unreadable, empty or loose."""


def env_name(option: str) -> str:
    """``TOKEND_<NAME>``: the variable that sets ``--<name>``."""
    return "TOKEND_" + option.upper().replace("-", "_")


def truthy(value: str) -> bool:
    """A flag's variable: 1, true, yes or on (any case) set it."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def split_list(value: str | None) -> list[str]:
    """A repeatable option's variable: its values comma- (or space-) separated."""
    return [v for v in (value or "").replace(",", " ").split() if v]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: the daemon's ``--name`` and ``TOKEND_NAME``, and the tool's ``--name``."""

    name: str
    help: str
    default: str | None = None
    short: str | None = None
    flag: bool = False
    repeatable: bool = False
    """Given once per value on the command line, comma-separated in the environment."""
    bounds: tuple[int, int] | None = None
    """A whole number's lowest and highest accepted value."""
    metavar: str | None = None
    """The tool's placeholder in --help (the daemon's usage.Options shows none)."""
    env_note: str = ""
    """Said of the variable in the daemon's --help, after its name (``, comma-separated``)."""

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def flag_name(self) -> str:
        return "--" + self.name

    @property
    def help_with_env(self) -> str:
        """The daemon's --help text: the help, then the variable."""
        return f"{self.help} [env {self.env}{self.env_note}]"

    def from_environment(self, environ: Mapping[str, str]) -> Any:
        """This option's value in ``environ``; None when its variable is not set."""
        value = environ.get(self.env)
        if self.repeatable:
            return split_list(value)
        if value is None:
            return None
        return int(truthy(value)) if self.flag else value

    def whole_number(self, value: Any, source: str) -> int:
        """``value`` as a whole number within this option's bounds."""
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise OptionError(f"{source} must be a whole number") from None
        if self.bounds is not None:
            low, high = self.bounds
            if not low <= number <= high:
                raise OptionError(f"{source} must be between {low} and {high}")
        return number


def by_name(options: Collection[Option]) -> dict[str, Option]:
    return {option.name: option for option in options}


@dataclass(frozen=True, slots=True)
class Layered:
    """Option values as the daemon takes them, with where each came from: error messages
    name ``--name`` for the command line and the default, ``TOKEND_NAME`` for the
    environment."""

    values: Mapping[str, Any]
    from_environment: frozenset[str]
    given: frozenset[str]
    """Set on the command line or by a non-empty variable (not their defaults)."""

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def source(self, name: str) -> str:
        return env_name(name) if name in self.from_environment else f"--{name}"


def layered(
    options: Collection[Option],
    command_line: Callable[[Option], Any],
    environ: Mapping[str, str],
) -> Layered:
    """Each option's value: ``command_line(option)`` unless None (or an empty list), else its
    variable in ``environ``, else its default (False for a flag, [] for a repeatable one)."""
    values: dict[str, Any] = {}
    from_environment: set[str] = set()
    given: set[str] = set()
    for option in options:
        value = command_line(option)
        if value is not None and value != []:
            values[option.name] = value
            given.add(option.name)
            continue
        value = option.from_environment(environ)
        if value is not None and value != []:
            values[option.name] = value
            from_environment.add(option.name)
            if value:
                given.add(option.name)
        elif option.flag:
            values[option.name] = False
        elif option.repeatable:
            values[option.name] = []
        else:
            values[option.name] = option.default
    return Layered(values, frozenset(from_environment), frozenset(given))


def socket_path(description: str) -> str:
    """The path of a ``unix:`` endpoint string (``\\:`` escapes a colon)."""
    path = description[len("unix:") :]
    parts: list[str] = []
    escaped = False
    for char in path:
        if escaped:
            parts.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            break
        else:
            parts.append(char)
    name = "".join(parts)
    return name[len("path=") :] if name.startswith("path=") else name
