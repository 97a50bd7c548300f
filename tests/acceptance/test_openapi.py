"""docs/openapi.yaml describes the HTTP API exactly as the running server answers it.

The route set is compared with the aiohttp route table of `HttpServer`; then schemathesis
generates requests for every documented operation and sends them to a real leader and
a real standby, checking each response's status code, content type and body against
the description. Admin routes are sent without a token, with a wrong one and with the
right one; step-down runs last (it hands the leadership over).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from requests.structures import CaseInsensitiveDict
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.openapi.checks import JsonSchemaError, UndefinedStatusCode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from aupus_ha.app import Instance
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from aupus_ha.operations.http import LEGACY_PREFIX, HttpServer
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import INSERT_AGED_READING

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
TOKEN = "openapi-token-1234"
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
ADMIN_PATHS = {"/health/alerts/check", LEGACY_PREFIX + "/health/alerts/check"}
STEP_DOWN = "/admin/step-down"
EXAMPLES = 3  # per operation and instance: the routes take no input but X-Request-Id


Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]


def _schema() -> OpenApiSchema:
    return schemathesis.openapi.from_path(SPEC)


def _operations(schema: OpenApiSchema) -> dict[tuple[str, str], Operation]:
    ops: dict[tuple[str, str], Operation] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation the loader cannot read
        op = result.ok()
        ops[(op.method.upper(), op.path)] = op
    return ops


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the aiohttp app registers (HEAD comes with GET)."""
    # build_app only wires handlers; no attribute of the instance is read before a request.
    app = HttpServer(cast(Instance, object())).build_app()
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}


def test_spec_is_valid_and_lists_exactly_the_served_routes() -> None:
    """A valid OpenAPI document whose (method, path) set equals http.py's route table."""
    schema = _schema()
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    documented = set(_operations(schema))
    served = served_routes()
    assert documented == served, (
        f"undocumented: {sorted(served - documented)}; not served: {sorted(documented - served)}"
    )
    for method, path in served:
        if method in {"GET", "HEAD"} and path.startswith("/health"):
            assert (method, LEGACY_PREFIX + path) in served, f"{method} {path} has no mirror"


def _auth(case: AnyCase, token: str | None) -> dict[str, str]:
    """The headers to send: generated ones without any credential, plus `token`'s."""
    headers = {
        k: v
        for k, v in (case.headers or {}).items()
        if k.lower() not in {"authorization", "x-admin-token"}
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _send(case: AnyCase, base_url: str, token: str | None = None) -> int:
    """Send, check against the description, and return the status code."""
    headers = _auth(case, token)
    case.headers = CaseInsensitiveDict(headers)  # generated credentials dropped
    response = case.call(base_url=base_url, timeout=15)
    case.validate_response(response, checks=CHECKS, headers=headers)
    if case.operation.path.startswith(LEGACY_PREFIX) and case.method.upper() != "HEAD":
        meta = response.json()["meta"]
        sent = {k.lower(): v for k, v in headers.items()}.get("x-request-id")
        assert sent is None or meta["requestId"] == sent, (sent, meta)
    return response.status_code


def _exercise(op: Operation, base_url: str, tokens: list[str | None]) -> list[int]:
    """EXAMPLES generated cases of one operation, each sent once per token."""
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def run(case: AnyCase) -> None:
        for token in tokens:
            seen.append(_send(case, base_url, token))

    run()
    return seen


async def _cluster(spawn: ClusterFactory, database_url: str) -> tuple[InstanceProcess, ...]:
    equipment = await seed_equipment(database_url, 2)
    await fetch(database_url, INSERT_AGED_READING, equipment[0][0], 1.0)  # dados-recentes: ok
    leader = spawn("node-a", ADMIN_TOKEN=TOKEN)
    await wait_single_leader([leader])
    standby = spawn("node-b", ADMIN_TOKEN=TOKEN)

    async def ready() -> bool:
        return (await standby.get("/health/standby"))[0] == 200

    await wait_until(ready, 20, f"node-b never became a healthy standby: {standby.tail()}")
    return leader, standby


def _url(inst: InstanceProcess) -> str:
    return f"http://127.0.0.1:{inst.http_port}"


async def test_leader_and_standby_answer_as_documented(
    spawn: ClusterFactory, database_url: str
) -> None:
    """Every operation, on the leader and on a standby: codes, types and bodies conform."""
    leader, standby = await _cluster(spawn, database_url)
    operations = _operations(_schema())
    codes: dict[tuple[str, str, str], set[int]] = {}
    for inst in (leader, standby):
        for (method, path), op in sorted(operations.items()):
            if path == STEP_DOWN:
                continue
            tokens: list[str | None] = [None, "wrong", TOKEN] if path in ADMIN_PATHS else [None]
            codes[(inst.name, method, path)] = set(_exercise(op, _url(inst), tokens))
    # The role routes tell the two apart, and the token decides the admin route.
    assert codes[("node-a", "GET", "/health/leader")] == {200}
    assert codes[("node-b", "GET", "/health/leader")] == {503}
    assert codes[("node-a", "HEAD", "/health/standby")] == {503}
    assert codes[("node-b", "HEAD", "/health/standby")] == {200}
    assert codes[("node-b", "GET", LEGACY_PREFIX + "/health/standby")] == {200}
    assert codes[("node-a", "POST", "/health/alerts/check")] == {401, 403, 200}

    step_down = operations[("POST", STEP_DOWN)]
    assert set(_exercise(step_down, _url(standby), [None, "wrong", TOKEN])) == {401, 403, 409}
    assert set(_exercise(step_down, _url(leader), [None, "wrong"])) == {401, 403}
    assert _send(step_down.Case(), _url(leader), TOKEN) == 200
    assert await wait_single_leader([leader, standby]) is standby


def test_an_undocumented_answer_is_caught() -> None:
    """The checks are live: a code or a body the description does not allow fails."""
    case = _operations(_schema())[("GET", "/health/leader")].Case()
    teapot = _response(case, 418, {"instance_id": "x"})
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(teapot, checks=CHECKS)
    assert any(isinstance(f, UndefinedStatusCode) for f in caught.value.exceptions)
    incomplete = _response(case, 200, {"instance_id": "x", "is_leader": True})
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(incomplete, checks=CHECKS)
    assert any(isinstance(f, JsonSchemaError) for f in caught.value.exceptions)


def _response(case: AnyCase, status: int, body: dict[str, Any]) -> Response:
    """A response as the transport would hand it over, without a server."""
    return Response(
        status_code=status,
        headers={"content-type": ["application/json"]},
        content=orjson.dumps(body),
        request=requests.Request("GET", "http://127.0.0.1" + case.operation.path).prepare(),
        elapsed=0.01,
        verify=False,
    )
