"""A class's logger that keeps the namespace operators know from the log lines
(``[tokend.web.TokenAPI#info]``) when the class moves to another module."""

from __future__ import annotations

from twisted.logger import Logger


class NamedLogger(Logger):
    """Like ``log = Logger()`` on a class, whose namespace twisted derives from the class's
    module on every access, but with the namespace given here."""

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return Logger(self.namespace, owner if instance is None else instance, self.observer)
