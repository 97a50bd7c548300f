"""Loads `sql/queries.sql` (named blocks) and `sql/migrations/*.sql` by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# Anything that looks like a block header but does not match _NAME would silently glue
# its query onto the block before it: refuse it instead.
_HEADER_LIKE = re.compile(r"^--\s*name\s*:.*$", re.MULTILINE)
# Placeholders filled from column types; only these values can ever be substituted.
_TYPE_WHITELIST = {"id_type": {"text", "bpchar"}, "ts_type": {"timestamptz", "timestamp"}}


def sql_dir() -> Path:
    """`sql/` inside an installed wheel, or at the repository root in a checkout."""
    packaged = Path(str(resources.files("aupus_ha"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name:` blocks into {name: sql}; comment lines are dropped."""
    for header in _HEADER_LIKE.findall(text):
        if not _NAME.fullmatch(header):
            raise ValueError(f"malformed query header {header!r}: use '-- name: lower_snake'")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql
    return queries


@cache
def _raw_queries() -> dict[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


class Queries:
    """The named queries, with the column-type placeholders resolved."""

    def __init__(self, *, id_type: str = "text", ts_type: str = "timestamptz") -> None:
        values = {"id_type": id_type, "ts_type": ts_type}
        for key, value in values.items():
            if value not in _TYPE_WHITELIST[key]:
                raise ValueError(f"{key}={value!r} is not one of {_TYPE_WHITELIST[key]}")
        self._sql = {
            name: sql.replace("{id_type}", id_type).replace("{ts_type}", ts_type)
            for name, sql in _raw_queries().items()
        }

    def __getitem__(self, name: str) -> str:
        return self._sql[name]

    def names(self) -> list[str]:
        return sorted(self._sql)


def migrations() -> list[tuple[str, str, str]]:
    """[(version, name, sql)] in order, from files named NNN_name.sql."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise ValueError(f"migration file {path.name} must start with a number")
        found.append((version, name, path.read_text(encoding="utf-8")))
    return found
