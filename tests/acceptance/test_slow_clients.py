"""Slow HTTP clients against a real process with few file descriptors (issue 16).

300 connections that send half a request and then nothing used to be held forever:
with 256 open files the process ran out of descriptors, stopped answering and lost its
spool. The HTTP server now bounds the time to read a request's headers and the number
of connections it keeps; the instance keeps ingesting and answering /health.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    generic_messages,
    publish,
    seed_equipment,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)

SLOW_CLIENTS = 300
HEADER_TIMEOUT_S = 3
FILE_LIMIT = 256


async def _half_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, deadline: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(4096), timeout=deadline - time.monotonic()):
            pass  # an error response before the close is fine
    except (TimeoutError, OSError):
        return False
    return True


async def test_slow_clients_neither_exhaust_files_nor_stop_ingestion(
    base_env: dict[str, str], database_url: str, mosquitto: object, tmp_path: Path
) -> None:
    """300 half-sent requests against an instance limited to 256 open files: /health
    keeps answering, readings published meanwhile are all stored, and every slow
    connection is closed by the server within the header read bound."""
    equipment = await seed_equipment(database_url, 4)
    env = {**base_env, "HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    # hard = soft: the instance cannot raise its own limit, the HTTP bounds must do it.
    limit = ("prlimit", f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", "--")
    node = InstanceProcess("node-a", env, tmp_path, wrap=limit).start()
    try:
        await wait_single_leader([node])
        started = time.monotonic()
        opened = await asyncio.gather(*(_half_request(node.http_port) for _ in range(SLOW_CLIENTS)))
        slow = [c for c in opened if c is not None]
        for _ in range(5):
            status, _ = await node.get("/health", timeout=3)
            assert status == 200, f"/health answered {status} during the flood: {node.tail()}"
        messages = generic_messages(equipment, 100)
        await publish(mosquitto.url, messages, rate=500)  # type: ignore[attr-defined]
        await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages}, timeout=30)
        deadline = started + HEADER_TIMEOUT_S + 10
        closed = await asyncio.gather(*(_closed_by_server(r, deadline) for r, _ in slow))
        assert all(closed), f"{closed.count(False)} slow connections still open: {node.tail()}"
        for _, writer in slow:
            writer.close()
        assert node.alive(), node.tail()

        async def answers() -> bool:
            return (await node.get("/health"))[0] == 200

        await wait_until(answers, 5, f"no answer after the flood: {node.tail()}")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{node.http_port}/metrics") as resp,
        ):
            text = await resp.text()
        closed_by_us = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(
                ("aupus_ha_http_connections_timed_out_total", "aupus_ha_http_connections_evicted")
            )
        )
        assert closed_by_us >= len(slow), text
    finally:
        node.stop_now()
