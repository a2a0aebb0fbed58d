"""Client-supplied text made safe for a log line.

A user name, a client id or a scope comes from whoever sent the request. Written raw, an escape
sequence repaints an operator's terminal, a line break forges a log line of its own, and a bidi
override (U+202E) or a zero-width character makes a name read as another on screen: everything
``str.isprintable()`` rejects is escaped, in the text format and in the JSON one.
"""

from __future__ import annotations


def _escaped(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: str | None) -> str | None:
    """``value`` with backslashes and every character ``str.isprintable()`` rejects escaped
    (control characters, line and paragraph separators, bidi controls, zero-width and other
    format characters, unassigned code points, spaces other than the plain one)."""
    if value is None or (value.isprintable() and "\\" not in value):
        return value
    return "".join(map(_escaped, value))
