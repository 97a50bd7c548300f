"""One source for every setting's default: the `SETTINGS` table of aupus_ha/config.py.

Issue 13: the loader, the `Settings` dataclass, docs/configuration.md, the lab and the
tests each wrote the defaults down again. Now the loader and the dataclass read them from
the table, and these tests hold the rest to it: the docs' default and range columns
equal the table's, the loader reads every row and passes no default of its own, and
the lab and test environments that mean "the default" take it from the table.
"""

from __future__ import annotations

import ast
import operator
import re
import socket
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from aupus_ha.config import (
    SETTING,
    SETTINGS,
    Setting,
    Settings,
    default_renew_deadline,
    default_text,
    default_value,
    load_settings,
)
from tests.helpers import setting_value
from tests.unit.test_compose_and_docs import CONFIG_DOC, documented_variables

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PY = ROOT / "aupus_ha" / "config.py"
# The loader's readers (config._Env): each takes the variable's name, nothing else but
# `derived=` for a row whose default is computed from other values.
READERS = {"text", "integer", "real", "flag", "choice", "optional", "secret"}
MINIMAL = {"DATABASE_URL": "postgresql://u@db/aupus", "MQTT_HOST": "broker"}
NAME = operator.attrgetter("name")  # pytest ids: the variable


def _doc_rows() -> dict[str, tuple[str, str]]:
    """docs/configuration.md's table: variable -> (default cell, accepts cell)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in CONFIG_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0]) if len(cells) == 4 else None
        if match:
            rows[match.group(1)] = (cells[1], cells[2])
    return rows


def _number(value: float) -> str:
    """A bound as the docs write it: 300, 0.5, 1125899906842624."""
    return str(int(value)) if float(value).is_integer() else repr(value)


# --- the docs agree with the table --------------------------------------------------------


def test_the_docs_list_the_table_in_its_order() -> None:
    assert documented_variables() == [s.name for s in SETTINGS]


@pytest.mark.parametrize("setting", SETTINGS, ids=NAME)
def test_the_documented_default_is_the_tables(setting: Setting) -> None:
    """A literal default is the cell's first `value`; no default reads "none"; a
    derived one (host name, 0.7 x lease, port by TLS) says how, never "none"."""
    cell = _doc_rows()[setting.name][0]
    if setting.default is not None:
        first = re.match(r"`([^`]*)`", cell)
        assert first is not None and first.group(1) == setting.default, (cell, setting)
    elif setting.derived is not None:
        assert not cell.startswith("none"), cell
    else:
        assert cell.startswith("none"), cell


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.low is not None], ids=NAME)
def test_the_documented_range_is_the_tables(setting: Setting) -> None:
    assert setting.low is not None and setting.high is not None
    kind = "integer" if setting.kind == "int" else "number"
    accepts = _doc_rows()[setting.name][1]
    assert accepts.startswith(f"{kind} {_number(setting.low)}..{_number(setting.high)}"), accepts


def test_numbers_have_bounds_and_choices_have_their_default() -> None:
    for s in SETTINGS:
        assert (s.kind in {"int", "float"}) == (s.low is not None and s.high is not None), s
        assert s.kind != "choice" or s.default in s.choices, s
        assert s.default is None or s.derived is None, s  # one or the other


# --- the loader reads the table, and only the table ----------------------------------------


def _reader_calls() -> list[ast.Call]:
    tree = ast.parse(CONFIG_PY.read_text(encoding="utf-8"))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "env"
        and node.func.attr in READERS
    ]


def test_the_loader_has_no_default_outside_the_table() -> None:
    """Every read names a row of the table and passes no default; only the rows that
    say their default is derived get one computed (`derived=`)."""
    calls = _reader_calls()
    read: set[str] = set()
    for call in calls:
        where = f"config.py:{call.lineno}"
        assert len(call.args) == 1 and isinstance(call.args[0], ast.Constant), where
        name = call.args[0].value
        assert isinstance(name, str) and name in SETTING, where
        read.add(name)
        keywords = [k.arg for k in call.keywords]
        assert keywords in ([], ["derived"]), where
        assert bool(keywords) == (SETTING[name].derived is not None), (where, name)
    assert read == set(SETTING), f"rows never read: {sorted(set(SETTING) - read)}"


def test_the_loader_reads_the_environment_only_through_the_table() -> None:
    """No `env.get("X", "default")` or `get("X", ...)` left in config.py."""
    source = CONFIG_PY.read_text(encoding="utf-8")
    assert not re.search(r"""\bget\(\s*["'][A-Z][A-Z0-9_]*["']\s*,""", source)
    assert not re.search(r"""\benv\[\s*["']""", source)


def test_an_empty_environment_loads_the_tables_defaults() -> None:
    settings = load_settings(MINIMAL, dotenv=None)
    derived = {
        "INSTANCE_ID": socket.gethostname(),
        "RENEW_DEADLINE_S": default_renew_deadline(default_value("LEASE_TTL_S")),
        "MQTT_PORT": 1883,
    }
    for s in SETTINGS:
        if s.name in MINIMAL or s.name == "MQTT_URL":
            continue
        expected = derived.get(s.name, s.value)
        loaded = setting_value(settings, s.name)
        assert loaded == expected and type(loaded) is type(expected), (s.name, loaded)


def test_the_dataclass_defaults_are_the_tables() -> None:
    """`Settings(...)` built in code has the table's defaults, of the loaded types."""
    for f in fields(Settings):
        name = f.name.upper()
        if name not in SETTING or (f.default is MISSING and f.default_factory is MISSING):
            continue  # not a variable, or required (DATABASE_URL, INSTANCE_ID)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        expected = (
            default_renew_deadline(default_value("LEASE_TTL_S"))
            if name == "RENEW_DEADLINE_S"
            else default_value(name)
        )
        assert default == expected and type(default) is type(expected), name


def test_default_text_is_what_an_environment_holds() -> None:
    """What the lab and the tests write into an instance's environment for "the
    default" loads as that default."""
    env = {**MINIMAL, "LEASE_TTL_S": default_text("LEASE_TTL_S")}
    assert load_settings(env, dotenv=None).lease_ttl_s == default_value("LEASE_TTL_S") == 5.0
    with pytest.raises(KeyError, match="RENEW_DEADLINE_S"):
        default_text("RENEW_DEADLINE_S")  # derived: no literal to hand out
