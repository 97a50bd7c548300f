"""Database errors are classified by SQLSTATE in one place (aupus_ha.database.connection).

Issue 17, defect 5: disk full, too many connections, shutdowns, a read-only database,
serialization failures and lock timeouts crashed the flusher, the HA loop and start-up.
They are states of the server that pass: retried with backoff. Data errors isolate the
item that caused them; anything else is not blamed on an item.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import asyncpg
import pytest

from aupus_ha.database.connection import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    ErrorKind,
    classify,
    describe_error,
    translating_db_errors,
    unavailable,
)

PACKAGE = Path(__file__).resolve().parents[2] / "aupus_ha"

TRANSIENT = [
    "08000",
    "08006",
    "53100",  # disk full
    "53200",  # out of memory
    "53300",  # too many connections
    "57014",  # query canceled (statement_timeout)
    "57P01",  # admin shutdown
    "57P02",  # crash shutdown
    "57P03",  # cannot connect now
    "57P05",  # idle session timeout
    "40001",  # serialization failure
    "40P01",  # deadlock
    "25006",  # read-only transaction
    "25P03",  # idle-in-transaction timeout
    "55P03",  # lock not available
    "58030",  # I/O error
    "28P01",  # password refused: fixed on the server side
]
ITEM = ["22001", "22003", "22021", "22P02", "23502", "23503", "23514", "54000"]
OTHER = ["42501", "42P01", "XX000", "25P02", "55000", "0A000", "P0001"]


def _server_error(code: str) -> asyncpg.PostgresError:
    """What asyncpg raises for `code`: its class for the code, or UnknownPostgresError."""
    cls = asyncpg.PostgresError.get_message_class_for_sqlstate(code)  # type: ignore[attr-defined]
    exc: asyncpg.PostgresError = cls("server said no")
    exc.sqlstate = code  # asyncpg sets it from the server's message
    return exc


@pytest.mark.parametrize("code", TRANSIENT)
def test_server_states_are_retried(code: str) -> None:
    """Every code of the table is TRANSIENT: back off and keep running."""
    assert classify(_server_error(code)) is ErrorKind.TRANSIENT


@pytest.mark.parametrize("code", ITEM)
def test_data_errors_isolate_the_item(code: str) -> None:
    """Class 22, 23 and 54 are about one row's data."""
    assert classify(_server_error(code)) is ErrorKind.ITEM


@pytest.mark.parametrize("code", OTHER)
def test_other_server_errors_are_not_blamed_on_an_item(code: str) -> None:
    """A privilege, a missing table, a server bug: neither a passing state nor the data."""
    assert classify(_server_error(code)) is ErrorKind.OTHER


def test_codes_asyncpg_does_not_know_are_classified_by_their_class() -> None:
    """A future code in a transient class (asyncpg raises UnknownPostgresError) retries."""
    exc = _server_error("53999")
    assert isinstance(exc, asyncpg.exceptions.UnknownPostgresError)
    assert classify(exc) is ErrorKind.TRANSIENT
    assert classify(_server_error("22999")) is ErrorKind.ITEM
    # `except CONNECTION_ERRORS` (election, alerts, probes) retries any unknown code.
    assert isinstance(exc, CONNECTION_ERRORS)


def test_transport_and_python_errors() -> None:
    """Lost sockets and timeouts retry; an exception of our own code blames the item."""
    assert classify(ConnectionResetError()) is ErrorKind.TRANSIENT
    assert classify(TimeoutError()) is ErrorKind.TRANSIENT
    assert classify(asyncpg.exceptions.ConnectionDoesNotExistError("x")) is ErrorKind.TRANSIENT
    assert classify(DatabaseUnavailable("x")) is ErrorKind.TRANSIENT
    assert classify(OverflowError("fsum")) is ErrorKind.ITEM
    assert classify(ValueError("x")) is ErrorKind.ITEM


def test_except_tuple_agrees_with_classify() -> None:
    """`except CONNECTION_ERRORS` catches exactly the asyncpg classes classify retries."""
    for name in asyncpg.exceptions.__all__:
        cls = getattr(asyncpg.exceptions, name)
        code = getattr(cls, "sqlstate", None)
        if not (isinstance(cls, type) and issubclass(cls, asyncpg.PostgresError)):
            continue
        if not isinstance(code, str):
            continue
        caught = issubclass(cls, CONNECTION_ERRORS)
        assert caught == (classify(_server_error(code)) is ErrorKind.TRANSIENT), (name, code)


def test_unavailable_keeps_the_sqlstate() -> None:
    """The retried error carries the code, and the log text names it."""
    exc = unavailable(_server_error("25006"))
    assert isinstance(exc, DatabaseUnavailable) and exc.sqlstate == "25006"
    assert "[25006]" in describe_error(_server_error("25006"))


# --- translating_db_errors: the one translation into DatabaseUnavailable -----------------


def _through_helper(exc: BaseException) -> tuple[BaseException, list[BaseException]]:
    """What leaves `translating_db_errors` when `exc` is raised inside it, and what
    its `on_error` saw."""
    seen: list[BaseException] = []
    try:
        with translating_db_errors(on_error=seen.append):
            raise exc
    except BaseException as leaving:  # the test looks at any outcome
        return leaving, seen
    raise AssertionError("the helper swallowed the error")


@pytest.mark.parametrize("code", TRANSIENT)
def test_helper_turns_server_states_into_unavailable(code: str) -> None:
    """A passing server state leaves as DatabaseUnavailable, code and cause kept."""
    original = _server_error(code)
    leaving, seen = _through_helper(original)
    assert isinstance(leaving, DatabaseUnavailable)
    assert leaving.sqlstate == code
    assert leaving.__cause__ is original
    assert str(leaving) == describe_error(original)
    assert seen == [original]


@pytest.mark.parametrize("code", ITEM + OTHER)
def test_helper_lets_data_and_other_errors_through(code: str) -> None:
    """A row's data or a real fault (privilege, missing table) is not "unavailable":
    the caller sees the server's own error, and `on_error` is not called."""
    original = _server_error(code)
    leaving, seen = _through_helper(original)
    assert leaving is original
    assert seen == []


@pytest.mark.parametrize(
    "original",
    [
        ConnectionResetError("peer"),
        TimeoutError(),
        OSError("no route"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        asyncpg.exceptions.InternalClientError("another operation is in progress"),
        _server_error("53999"),  # a code asyncpg does not know, in a transient class
    ],
    ids=repr,
)
def test_helper_turns_transport_errors_into_unavailable(original: BaseException) -> None:
    leaving, seen = _through_helper(original)
    assert isinstance(leaving, DatabaseUnavailable)
    assert leaving.__cause__ is original
    assert seen == [original]


@pytest.mark.parametrize(
    "original",
    [DatabaseUnavailable("lock connection is closed"), ValueError("ours"), KeyError("q")],
    ids=repr,
)
def test_helper_leaves_other_exceptions_alone(original: BaseException) -> None:
    """Already translated, or a bug of our own: unchanged (no double wrapping)."""
    leaving, seen = _through_helper(original)
    assert leaving is original
    assert seen == []


def test_helper_lets_cancellation_through() -> None:
    """A cancelled task stays cancelled: never retried as "database unavailable"."""
    leaving, seen = _through_helper(asyncio.CancelledError())
    assert isinstance(leaving, asyncio.CancelledError)
    assert seen == []


async def test_helper_works_around_awaits() -> None:
    """A plain `with` in a coroutine sees what an awaited call raised."""

    async def failing_query() -> None:
        await asyncio.sleep(0)
        raise _server_error("57P01")

    with pytest.raises(DatabaseUnavailable) as caught, translating_db_errors():
        await failing_query()
    assert caught.value.sqlstate == "57P01"
    with translating_db_errors():
        await asyncio.sleep(0)  # nothing raised: nothing happens


def _handlers_catching_connection_errors(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler)
        and node.type is not None
        and "CONNECTION_ERRORS" in ast.unparse(node.type)
    ]


def test_the_translation_exists_once() -> None:
    """Issue 13: no `except CONNECTION_ERRORS: raise DatabaseUnavailable(...)` copies
    in the runtime; every translation goes through `translating_db_errors`."""
    copies = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if "lab" not in path.relative_to(PACKAGE).parts
        and (lines := _handlers_catching_connection_errors(path))
    }
    assert copies == {"database/connection.py": copies.get("database/connection.py", [])}
    assert len(copies["database/connection.py"]) == 1  # the helper itself
