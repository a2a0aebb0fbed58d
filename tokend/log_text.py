"""Client-supplied text made safe for a log line.

A user name, a client id or a scope comes from whoever sent the request. Written raw, an escape
sequence repaints an operator's terminal and a line break forges a log line of its own, in the
text format and in anything that reads it line by line.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == ord("\\"):
        return "\\\\"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: str | None) -> str | None:
    """``value`` with control characters, line separators and backslashes escaped."""
    if value is None or (value.isprintable() and "\\" not in value):
        return value
    return _UNSAFE.sub(_escaped, value)
