"""`tipos_equipamentos.mqtt_schema`: JSON Schemas compiled once, applied per reading.

jsonschema (the reference implementation, all drafts) rather than a hand-written
checker. A schema is compiled when the topic catalogue is (re)loaded — once per distinct
schema text, not per message. A null schema, or one that is not a valid JSON Schema at
all, means "every reading is valid" (DOMAIN.md); the latter is logged once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jsonschema import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from aupus_ha.logs import get_logger

log = get_logger(__name__)
MAX_ERRORS = 10  # kept in the stored JSON; more would only bloat the row


@lru_cache(maxsize=256)
def compile_schema(text: str | None) -> Validator | None:
    """A validator for the schema text, or None when nothing is to be checked."""
    if text is None:
        return None
    try:
        schema: Any = orjson.loads(text)
        cls = validator_for(schema)
        cls.check_schema(schema)
    except (orjson.JSONDecodeError, SchemaError, TypeError) as exc:
        log.warning("schema.invalid", error=str(exc)[:200])
        return None
    validator: Validator = cls(schema)
    return validator


def validation_errors(validator: object | None, obj: Any) -> list[str]:
    """The first few validation messages (empty when valid or unchecked)."""
    if validator is None or not hasattr(validator, "iter_errors"):
        return []
    errors: list[str] = []
    for error in validator.iter_errors(obj):
        path = "/".join(str(p) for p in error.absolute_path)
        errors.append(f"{path or '(root)'}: {error.message}"[:300])
        if len(errors) >= MAX_ERRORS:
            break
    return errors
