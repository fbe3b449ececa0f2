"""Structured logging: JSON lines on stderr for daemons and plugins, a console renderer on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any

# structlog imports rich when it is installed (typer brings it) for pretty tracebacks in its
# console renderer: some 50 modules, about 40 ms and 4 MB in busd, in every plugin and at every
# start of a command. busd logs JSON, and a plain traceback serves a terminal, so structlog is
# imported with rich hidden; the entry goes again at once, so typer still finds rich for --help.
_hide_rich = "rich" not in sys.modules
if _hide_rich:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _hide_rich:
        del sys.modules["rich"]

__all__ = ["LEVELS", "configure", "get_logger", "hide_secrets"]

LEVELS = ("debug", "info", "warning", "error")

_secrets: frozenset[str] = frozenset()


def hide_secrets(values: set[str]) -> None:
    """Mask every occurrence of these strings (a process's configured secrets) in each log line from now on.

    Replaces what an earlier call gave: after a reload, busd hides the secrets of the configuration
    now in effect.
    """
    global _secrets
    _secrets = frozenset(values)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            # a short secret only as a whole value: masking every "ab" would garble the line, not protect it
            if secret in value and (len(secret) >= 4 or value == secret):
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _scrub(str(value))


def _scrub_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no configured secret leaves the process in a log line, tracebacks included."""
    return {k: _scrub(v) for k, v in event_dict.items()} if _secrets else event_dict


def configure(level: str = "info", *, json: bool | None = None, **context: Any) -> None:
    """Configure structlog once, early in a process's ``main()``.

    Args:
        level: minimum level, one of ``LEVELS``.
        json: force JSON (True) or console (False) output; default: JSON unless stderr is a TTY.
        context: keys bound to every line (e.g. ``plugin="scsi"``).
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:  # tracebacks become dicts before the scrubber, so a secret in an exception is masked too
        processors.append(structlog.processors.dict_tracebacks)
    processors += [_scrub_secrets, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger, with ``component=name`` in every line when given."""
    # initial values, not .bind(): binding here would freeze the configuration of import time
    return structlog.get_logger(component=name) if name else structlog.get_logger()
