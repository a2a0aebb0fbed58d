"""Distinguished names compared the way a directory compares them (RFC 4514).

groups.json names directory groups by DN, and the directory answers with DNs of its own
spelling: ``CN=Musicians, OU=Groups,DC=example,DC=com`` and ``cn=musicians,ou=groups,dc=example,
dc=com`` are the same group. Both sides go through :func:`normalise_dn` before they are compared:
attribute types and values lowercased (the usual matching rule of cn, ou, dc and uid is
case-insensitive), spaces around separators dropped, escapes written one way.
"""

from __future__ import annotations

SPECIAL = ',+"\\<>;'
HEX_DIGITS = "0123456789abcdefABCDEF"


class DNError(ValueError):
    """Text that is not a distinguished name."""


def normalise_dn(text: str) -> str:
    """One spelling per DN: ``cn=a b,ou=groups`` for any equivalent way of writing it."""
    rdns = [
        "+".join(sorted(f"{kind}={_escaped(value)}" for kind, value in rdn))
        for rdn in parse_dn(text)
    ]
    return ",".join(rdns)


def parse_dn(text: str) -> list[list[tuple[str, str]]]:
    """The RDNs of ``text``, each a list of (lowercased type, lowercased unescaped value)."""
    if not text.strip():
        raise DNError("an empty DN")
    rdns: list[list[tuple[str, str]]] = []
    rdn: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        equals = text.find("=", i)
        if equals < 0:
            raise DNError(f"no '=' after {text[i:]!r}")
        kind = text[i:equals].strip().lower()
        if not kind or not all(c.isalnum() or c in "-." for c in kind):
            raise DNError(f"bad attribute type {text[i:equals]!r}")
        value, i = _value(text, equals + 1)
        rdn.append((kind, value.lower()))
        if i >= n:
            rdns.append(rdn)
            return rdns
        if text[i] == ",":
            rdns.append(rdn)
            rdn = []
        i += 1


def _value(text: str, start: int) -> tuple[str, int]:
    """The unescaped value from ``start`` to the next unescaped ``,`` or ``+``."""
    out: list[str] = []
    raw = bytearray()
    i, n = start, len(text)
    trailing_spaces = 0

    def flush() -> None:
        if raw:
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DNError("an escaped value that is not UTF-8") from None
            raw.clear()

    while i < n and text[i] == " ":
        i += 1
    while i < n and text[i] not in ",+":
        char = text[i]
        if char == "\\":
            if _is_hex(text[i + 1 : i + 3]):
                raw.append(int(text[i + 1 : i + 3], 16))
                i += 3
            elif i + 1 < n:
                flush()
                out.append(text[i + 1])
                i += 2
            else:
                raise DNError("a DN ending in a backslash")
            trailing_spaces = 0
            continue
        flush()
        if char in '"<>;':
            raise DNError(f"unescaped {char!r} in a value")
        out.append(char)
        trailing_spaces = trailing_spaces + 1 if char == " " else 0
        i += 1
    flush()
    value = "".join(out)
    if trailing_spaces:
        value = value[:-trailing_spaces]
    if not value:
        raise DNError("an empty attribute value")
    return value, i


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in HEX_DIGITS for c in pair)


def _escaped(value: str) -> str:
    out = []
    for index, char in enumerate(value):
        leading = index == 0 and char in " #"
        trailing = index == len(value) - 1 and char == " "
        if char in SPECIAL or leading or trailing:
            out.append("\\" + char)
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)
