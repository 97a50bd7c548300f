"""structlog set-up: one JSON object per line, every line naming its instance.

A last processor replaces any configured secret that slipped into an event (a DSN in an
exception text, say) with `***`, so secrets cannot reach the logs even by accident.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class SecretScrubber:
    """structlog processor: masks the given secret strings anywhere in an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short strings would mask half of every line; they are not real secrets.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event
        for key, value in event.items():
            event[key] = self._scrub(value)
        return event


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(
    *,
    instance_id: str,
    log_format: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog for the whole process (call once, at start)."""
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        SecretScrubber(secrets),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(instance_id=instance_id)
    _route_stdlib_logging(shared, renderer)


def _route_stdlib_logging(shared: list[Any], renderer: Any) -> None:
    """gmqtt and asyncpg log through stdlib logging: same format, same scrubbing, and
    only their warnings (their info level is per-packet chatter)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    # While the database is down the pool logs a traceback every second or two while it
    # refills; our own `db.unavailable` / `db.reconnected` events already say it once.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
