"""Admin routes' guard (`ADMIN_TOKEN`) and the `aupus-ha step-down` client.

The token is sent as `Authorization: Bearer <token>` (or `X-Admin-Token: <token>`) and
compared in constant time. No token configured means the admin routes are refused: an
unset variable must never leave them open.
"""

from __future__ import annotations

import hmac
import ipaddress
import sys
from typing import Any
from urllib.parse import urlsplit

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
    try:
        # Header bytes that are not UTF-8 reach us as lone surrogates: not a token at
        # all, so a 401 like a missing one (it used to be a 500 and a traceback).
        presented = given.encode("utf-8")
    except UnicodeEncodeError:
        return {"error": "unreadable admin token (not UTF-8)"}, 401
    if not hmac.compare_digest(presented, token.reveal().encode()):
        return {"error": "wrong admin token"}, 403
    return None


def authorised(request: web.Request, token: Secret) -> bool:
    """Does the request carry the right ADMIN_TOKEN? (False when none is configured.)"""
    return refusal(request, token) is None


def sends_token_in_clear(url: str) -> bool:
    """An `http://` URL to a host other than this one: the token crosses a network unencrypted."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name other than localhost: assume it is another machine


async def post_admin(url: str, token: str) -> tuple[int, dict[str, Any]]:
    """POST to an admin route; (status, JSON body). Raises aiohttp.ClientError when down."""
    if token and sends_token_in_clear(url):
        print(
            f"aupus-ha: warning: ADMIN_TOKEN is sent in clear over plain HTTP to "
            f"{urlsplit(url).hostname}; use https:// (e.g. a TLS reverse proxy) or run "
            "step-down on that host",
            file=sys.stderr,
        )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, headers=headers, allow_redirects=False) as resp,
    ):
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = {"error": (await resp.text())[:200]}
        return resp.status, body if isinstance(body, dict) else {"body": body}
