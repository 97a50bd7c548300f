"""Real network partitions for the acceptance tests: a network namespace per test.

`NetNamespace` creates a namespace joined to the host by a veth pair on a /30 subnet of
its own (unique names and subnet, so parallel or leftover runs never clash), runs a
process inside it (`wrap` is the command prefix for `InstanceProcess`) and cuts one TCP
port in both directions by *dropping* its packets, like a pulled cable: the peers are
not told anything, so keepalives and timeouts are what notice, unlike a clean RST.

The drop uses only what a minimal kernel offers (no iptables/nftables here): an `htb`
root qdisc on each veth end with a default class for normal traffic and a class whose
leaf is `pfifo limit 0` (every packet enqueued there is dropped), plus one `u32` filter
per cut port and direction (namespace side: destination port; host side: source port).

PostgreSQL and Mosquitto listen on 127.0.0.1 only, which the namespace cannot reach:
`TcpForwarder` listens on the host end of the veth and relays to them. The servers see
the connections come from 127.0.0.1 (no pg_hba or listener changes), and the cut is on
the namespace's link, so it is the instance's own connections that go silent.

`set_hosts` gives the namespace its own /etc/hosts (a name that resolves, then stops
resolving, while the process runs).

Everything is torn down by `cleanup()` (idempotent; also run by a weakref.finalize at
garbage collection or interpreter exit): processes left in the namespace are killed, the
namespace and the veth pair deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
import weakref
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

NETNS_SKIP_REASON = "network namespaces not permitted here: the proxy variant covers it"

_SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")
_DEFAULT_CLASS = "1:1"
_DROP_CLASS = "1:2"

T = TypeVar("T")


class NetnsError(RuntimeError):
    """A namespace command failed (the message has the command and its output)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@functools.cache
def netns_unavailable() -> str | None:
    """None when this machine lets us build a namespace with a droppable veth, else why not.

    Probed once per test session by really doing it (root alone is not enough: a
    container may lack CAP_NET_ADMIN, or the kernel the qdiscs we need).
    """
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    try:
        with NetNamespace() as ns:
            ns.block_port(1)
            ns.unblock_port(1)
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot build a network namespace: {exc}"
    return None


class NetNamespace:
    """A network namespace with a veth pair to the host; see the module docstring."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.name = f"aupus-{token}"
        self.host_if = f"au{token}h"  # interface names: 15 bytes at most
        self.ns_if = f"au{token}n"
        subnet = _pick_subnet()
        hosts = list(subnet.hosts())
        self.prefixlen = subnet.prefixlen
        self.host_ip = str(hosts[0])
        self.ns_ip = str(hosts[1])
        self._blocked: dict[int, int] = {}  # port -> u32 filter priority
        self._state = {"created": False}
        weakref.finalize(self, _teardown, self.name, self.host_if, self._state)

    # -- lifecycle ---------------------------------------------------------------------

    def create(self) -> Self:
        self._state["created"] = True
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/{self.prefixlen}", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self._in_ns("ip", "addr", "add", f"{self.ns_ip}/{self.prefixlen}", "dev", self.ns_if)
            self._in_ns("ip", "link", "set", self.ns_if, "up")
            self._in_ns("ip", "link", "set", "lo", "up")
            self._tc_drop_classes([], self.host_if)
            self._tc_drop_classes(list(self.wrap), self.ns_if)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        _teardown(self.name, self.host_if, self._state)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- using it ------------------------------------------------------------------------

    @property
    def wrap(self) -> tuple[str, ...]:
        """Command prefix that runs a program inside the namespace (it execs: same pid)."""
        return ("ip", "netns", "exec", self.name)

    @property
    def etc_dir(self) -> Path:
        """Files here are bind-mounted over /etc/<same name> by `ip netns exec`."""
        return Path("/etc/netns") / self.name

    def set_hosts(self, entries: dict[str, str]) -> None:
        """The namespace's own /etc/hosts ({name: address}); a process started after the
        first call resolves through it, and sees later changes (rewritten in place)."""
        lines = ["127.0.0.1 localhost", *(f"{addr} {name}" for name, addr in entries.items())]
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        with (self.etc_dir / "hosts").open("w") as fh:  # same inode: the bind mount follows
            fh.write("\n".join(lines) + "\n")

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def block_port(self, port: int) -> None:
        """Drop every TCP packet to or from host-side `port`, both directions, silently."""
        if port in self._blocked:
            return
        prio = 10 + len(self._blocked) + secrets.randbelow(1000) * 16
        self._blocked[port] = prio
        self._u32([*self.wrap], self.ns_if, "add", prio, ("dport", port))
        self._u32([], self.host_if, "add", prio, ("sport", port))

    def unblock_port(self, port: int) -> None:
        prio = self._blocked.pop(port, None)
        if prio is None:
            return
        self._u32([*self.wrap], self.ns_if, "del", prio, ("dport", port))
        self._u32([], self.host_if, "del", prio, ("sport", port))

    def unblock_all(self) -> None:
        for port in list(self._blocked):
            self.unblock_port(port)

    # -- internals -----------------------------------------------------------------------

    def _in_ns(self, *args: str) -> None:
        _run([*self.wrap, *args])

    @staticmethod
    def _tc_drop_classes(prefix: list[str], dev: str) -> None:
        tc = [*prefix, "tc"]
        _run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
        rate = ("htb", "rate", "10gbit", "quantum", "60000")
        for classid in (_DEFAULT_CLASS, _DROP_CLASS):
            _run([*tc, "class", "add", "dev", dev, "parent", "1:", "classid", classid, *rate])
        # A leaf queue that holds nothing: whatever is classified here is dropped.
        _run([*tc, "qdisc", "add", "dev", dev, "parent", _DROP_CLASS, "pfifo", "limit", "0"])

    @staticmethod
    def _u32(prefix: list[str], dev: str, action: str, prio: int, match: tuple[str, int]) -> None:
        field, port = match
        args = [*prefix, "tc", "filter", action, "dev", dev, "parent", "1:"]
        args += ["protocol", "ip", "prio", str(prio)]
        if action == "add":
            args += ["u32", "match", "ip", "protocol", "6", "0xff"]
            args += ["match", "ip", field, str(port), "0xffff", "flowid", _DROP_CLASS]
        _run(args)


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /30 of 10.213.0.0/16 that no local interface uses (random: parallel runs differ)."""
    used = _ip("-o", "-4", "addr", "show", check=False).stdout
    taken = [ipaddress.IPv4Interface(w).network for w in used.split() if _is_cidr(w)]
    candidates: list[ipaddress.IPv4Network] = list(_SUBNETS.subnets(new_prefix=30))
    for _ in range(100):
        subnet = random.choice(candidates)
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise NetnsError("no free /30 in 10.213.0.0/16")


def _is_cidr(word: str) -> bool:
    if "/" not in word or word.count(".") != 3:
        return False
    try:
        ipaddress.ip_interface(word)
    except ValueError:
        return False
    return True


def _teardown(name: str, host_if: str, state: dict[str, bool]) -> None:
    """Kill what still runs in the namespace (only ours), delete it and the veth pair."""
    if not state.get("created"):
        return
    state["created"] = False
    out = _ip("netns", "pids", name, check=False).stdout
    for pid in (int(p) for p in out.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    _ip("netns", "del", name, check=False)
    shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
    with contextlib.suppress(OSError):  # only if empty: another run may be using it
        Path("/etc/netns").rmdir()
    _ip("link", "del", host_if, check=False)  # gone with the namespace, unless it was never moved


class TcpForwarder:
    """Relays TCP from `listen_host:listen_port` to `target_host:target_port`.

    Runs its own event loop in a daemon thread, so it keeps relaying whatever the test's
    own loop is doing. Each connection is two byte pumps; when one side ends, both close.
    """

    def __init__(
        self, listen_host: str, target_host: str, target_port: int, listen_port: int = 0
    ) -> None:
        self._listen = (listen_host, listen_port)
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> Self:
        self._thread.start()
        self._port = self._call(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._relay, *self._listen)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.transport.abort()
