"""Operations behind a narrow view (issue 13).

`health`, `http`, `metrics`, `alerts` (and every other module of `aupus_ha.operations`)
see the instance through `operations.view`, never through `app.Instance`: no import of
`aupus_ha.app` anywhere in the package, `TYPE_CHECKING` and function bodies included.
mypy checks statically that `Instance` satisfies the view (`app.py` hands itself to
`HttpServer`, `AlertManager` and `Metrics`); the runtime check here is the extra. The
mode -> role mapping exists once and the role health reports is pinned.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aupus_ha import constants
from aupus_ha.app import Instance
from aupus_ha.config import load_settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.leadership.ha import LeaderInfo, role_for_mode
from aupus_ha.operations.verdicts import current_leader, reported_role
from aupus_ha.operations.view import HttpView, InstanceView
from aupus_ha.pipeline.store import FlushResult

OPERATIONS = Path(__file__).resolve().parents[2] / "aupus_ha" / "operations"
BASE = {"DATABASE_URL": "postgresql://app:pw@db:5432/aupus", "MQTT_URL": "mqtt://broker:1883"}


def _imports(path: Path) -> set[str]:
    """Every module an import statement in the file names (relative ones resolved)."""
    package = ["aupus_ha", "operations"]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_operations_module_imports_the_app() -> None:
    """Not even under TYPE_CHECKING: the app builds the operations, never the reverse."""
    offenders = {
        path.name: sorted(n for n in _imports(path) if n == "aupus_ha.app")
        for path in sorted(OPERATIONS.rglob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_sees_a_type_checking_import(tmp_path: Path) -> None:
    """The check above is not vacuous: a guarded or relative import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from aupus_ha.app import Instance\n"
        "def f():\n    from ... import app\n"
    )
    assert {"aupus_ha.app", "aupus_ha.app.Instance"} <= _imports(sample)


def _instance(tmp_path: Path) -> Instance:
    settings = load_settings({**BASE, "INSTANCE_ID": "view-a", "SPOOL_DIR": str(tmp_path)})
    return Instance(settings, migrate=False)


def test_an_instance_satisfies_the_views(tmp_path: Path) -> None:
    """Every member the operations read exists on a freshly built Instance."""
    instance = _instance(tmp_path)
    assert isinstance(instance, InstanceView)
    assert isinstance(instance, HttpView)
    assert not isinstance(object(), InstanceView)


@pytest.mark.parametrize(
    ("mode", "role"),
    [
        (constants.MODE_PRODUCTION, constants.ROLE_STANDBY),
        (constants.MODE_DEVELOPMENT, constants.ROLE_OBSERVER),
        (constants.MODE_DISABLED, constants.ROLE_DISABLED),
    ],
)
def test_role_before_the_election_follows_the_mode(mode: str, role: str) -> None:
    """One mapping, used by the HA loop's first role and by /health before the loop."""
    assert role_for_mode(mode) == role
    assert reported_role(None, mode) == role


class _Lease:
    def __init__(self, role: str, valid: bool) -> None:
        self.role, self._valid = role, valid
        self.db_ok, self.last_tick, self.leader_info = True, 0.0, LeaderInfo()

    def is_leader(self) -> bool:
        return self._valid


@pytest.mark.parametrize(
    ("role", "valid", "reported"),
    [
        (constants.ROLE_LEADER, True, constants.ROLE_LEADER),
        (constants.ROLE_LEADER, False, constants.ROLE_STANDBY),  # the lease ran out
        (constants.ROLE_STOPPED, False, constants.ROLE_STANDBY),  # stopping: never leading
        (constants.ROLE_OBSERVER, False, constants.ROLE_OBSERVER),
    ],
)
def test_reported_role_never_claims_an_expired_lease(role: str, valid: bool, reported: str) -> None:
    assert reported_role(_Lease(role, valid), constants.MODE_PRODUCTION) == reported


def test_current_leader_ignores_a_released_term() -> None:
    assert current_leader({"leader_instance_id": "a", "released_at": None}) == "a"
    assert current_leader({"leader_instance_id": "a", "released_at": "2026-01-01"}) is None
    assert current_leader({}) is None


async def test_actions_of_an_instance_that_is_not_running(tmp_path: Path) -> None:
    """Before the database is there: no step-down, no flush, and a topic reload says why."""
    instance = _instance(tmp_path)
    assert await instance.step_down(1.0) is False
    assert await instance.request_flush() is False
    with pytest.raises(DatabaseUnavailable, match="not connected"):
        await instance.reload_topics()


def _sample(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def test_the_flush_histogram_is_fed_by_the_flusher_observer(tmp_path: Path) -> None:
    """`Metrics.observe_flush` (the flusher's `on_committed`) times committed flushes."""
    metrics = _instance(tmp_path).metrics
    metrics.observe_flush(FlushResult(rows=3, duplicates=0, rejects=0, refused=0, ms=4.0))
    text = metrics.render().decode()
    assert _sample(text, "aupus_ha_flush_duration_seconds_count") == 1
    assert _sample(text, "aupus_ha_flush_duration_seconds_sum") == pytest.approx(0.004)
