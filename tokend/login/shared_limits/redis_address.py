"""Where Redis is (``--redis``) and the password it wants (``--redis-password-file``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote, urlsplit

from tokend.secret_files import read_secret


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is: a UNIX socket path, or host and port (with TLS for ``rediss``)."""

    url: str
    path: str | None = None
    host: str = "localhost"
    port: int = 6379
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None
    password_in_url: bool = False
    """The password came inside the URL, where ``ps`` or the environment show it."""

    @property
    def shown(self) -> str:
        """The URL without its password, for logs."""
        if self.path is not None:
            return f"unix://{self.path}" + (f"?db={self.db}" if self.db else "")
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def with_password(self, password: str) -> RedisAddress:
        """This address with the password a file gave (it wins over one in the URL)."""
        return replace(self, password=password, password_in_url=False)


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
    ``unix:///path/to/redis.sock[?db=N]``; ValueError with a sentence otherwise."""
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError("a unix:// Redis URL needs an absolute socket path (unix:///path)")
        db_values = parse_qs(parts.query).get("db", ["0"])
        return RedisAddress(
            url,
            path=parts.path,
            db=_db(db_values[0]),
            username=username,
            password=password,
            password_in_url=password is not None,
        )
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("has a bad port") from None
    db = parts.path.strip("/") or "0"
    return RedisAddress(
        url,
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "rediss",
        db=_db(db),
        username=username,
        password=password,
        password_in_url=password is not None,
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"has a bad database number {text!r}")
    return int(text)


def read_redis_password(path: str, allow_loose: bool = False) -> str:
    """The Redis password from its file (:func:`tokend.secret_files.read_secret`), as text."""
    data = read_secret(path, "Redis password file", allow_loose)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"Redis password file {path} is not UTF-8 text") from None
