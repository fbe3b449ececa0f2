"""Secrets in configuration tables: what is one, how it is shown masked, and which strings logs must not carry.

One place decides for every plugin (built-in or not), for ``busctl config get``, ``busd --check`` and the
log scrubber of :mod:`bus.log`:

* a value under a secret key (:data:`SECRET_KEYS`, plus a built-in's own ``SECRET_OPTIONS``), at any
  depth (a webhook's ``bearer_token`` inside ``webhooks[2]``);
* the password of a URL (``https://user:pw@host``, ``nats://token@host``);
* the password of a libpq connection string (``host=db password=pw``);
* the value of a credential HTTP header (``Authorization``, ``Cookie``, ``X-Api-Key``...) in ``headers``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "SECRET_KEYS", "mask", "redact_url", "secret_values"]

MASK = "***"
SECRET_KEYS = frozenset({"password", "passwd", "token", "bearer_token", "secret", "signing_key", "api_key",
                         "apikey", "access_token", "client_secret"})
"""Keys whose value is a secret, in any plugin's table and in any nested table."""

_HEADER = re.compile(r"authorization|cookie|token|secret|api[-_]?key|password", re.I)
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#]*@", re.I)


def redact_url(url: str) -> str:
    """Return ``url`` without its secret: ``scheme://user:***@host`` (a lone token: ``scheme://***@host``)."""
    if not _URL.match(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = MASK if parts.password is None else f"{parts.username}:{MASK}"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def _url_secret(url: str) -> str | None:
    if not _URL.match(url):
        return None
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return userinfo.partition(":")[2] if ":" in userinfo else userinfo


def _is_secret(key: str, parent: str, secret_keys: frozenset[str]) -> bool:
    """Whether the value under ``key`` (in a table under ``parent``) is a secret."""
    return bool(_HEADER.search(key)) if parent == "headers" else key in secret_keys


def mask(table: Mapping[str, Any], keys: Iterable[str] = ()) -> dict[str, Any]:
    """Return ``table`` fit to print or log: every secret (see the module) replaced by ``***``.

    Args:
        keys: more secret keys (a built-in's ``SECRET_OPTIONS``).
    """
    secret_keys = SECRET_KEYS.union(keys)

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, Mapping):
            return {k: MASK if v and _is_secret(str(k), key, secret_keys) else walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if isinstance(value, str):
            return _DSN_PASSWORD.sub(rf"\g<1>{MASK}", redact_url(value))
        return value

    masked: dict[str, Any] = walk(dict(table), "")
    return masked


def secret_values(table: Mapping[str, Any], keys: Iterable[str] = ()) -> set[str]:
    """Return the secret strings in ``table`` (what :mod:`bus.log` scrubs from every line): what :func:`mask` hides."""
    secret_keys = SECRET_KEYS.union(keys)

    def walk(value: Any, key: str, secret: bool) -> Iterator[str]:
        if isinstance(value, Mapping):
            for k, v in value.items():
                yield from walk(v, str(k), _is_secret(str(k), key, secret_keys))
        elif isinstance(value, list):
            for v in value:
                yield from walk(v, key, secret)
        elif isinstance(value, str):
            if secret:
                yield value
                # "Bearer abc": the credential alone may be logged too
                yield value.partition(" ")[2] if value.lower().startswith(("bearer ", "basic ")) else ""
            yield _url_secret(value) or ""
            for match in _DSN_PASSWORD.finditer(value):
                yield match.group(2).strip("'")

    return {s for s in walk(table, "", False) if s}
