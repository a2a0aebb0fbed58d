"""JSON objects that hold each key once. ``json`` keeps the last of a key written twice without
a word; in a policy file that is most likely a mistake, in a token or a request body a reader
that keeps another copy than ours would see another document."""

from __future__ import annotations

from typing import Any


class DuplicateKey(ValueError):
    """``key`` written twice in one object; each reader says so in its own words."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for :func:`json.loads`: the object, or :class:`DuplicateKey`."""
    result = dict(pairs)
    if len(result) != len(pairs):  # rare: only then is each key looked at
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result
