"""Admin routes' guard (`ADMIN_TOKEN`) and the `aupus-ha step-down` client.

The token is sent as `Authorization: Bearer <token>` (or `X-Admin-Token: <token>`) and
compared in constant time. No token configured means the admin routes are refused: an
unset variable must never leave them open.
"""

from __future__ import annotations

import hmac
from typing import Any

import aiohttp
from aiohttp import web

from aupus_ha.config import Secret

TOKEN_HEADER = "X-Admin-Token"  # noqa: S105 - a header name, not a secret
CLIENT_TIMEOUT_S = 15.0


def presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header = request.headers.get(TOKEN_HEADER, "").strip()
    return header or None


def refusal(request: web.Request, token: Secret) -> tuple[dict[str, Any], int] | None:
    """None when the request may go on; else the error body and status (401/403)."""
    if not token:
        return {"error": "admin routes are disabled: ADMIN_TOKEN is not set"}, 403
    given = presented_token(request)
    if given is None:
        return {"error": "missing admin token (Authorization: Bearer <ADMIN_TOKEN>)"}, 401
    if not hmac.compare_digest(given.encode(), token.reveal().encode()):
        return {"error": "wrong admin token"}, 403
    return None


async def post_admin(url: str, token: str) -> tuple[int, dict[str, Any]]:
    """POST to an admin route; (status, JSON body). Raises aiohttp.ClientError when down."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, headers=headers) as resp,
    ):
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = {"error": (await resp.text())[:200]}
        return resp.status, body if isinstance(body, dict) else {"body": body}
