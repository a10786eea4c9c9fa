"""A fault-injecting HTTP proxy to put between pke-vsphere and the vCenter simulator.

It forwards each SOAP request to the simulator and, at configurable rates,
misbehaves the way a real vCenter or the network in front of it does:

- ``drop_before``: the connection is closed before the request reaches vCenter;
- ``drop_after``: vCenter handles the request, but the connection is closed
  before the reply (the caller cannot know whether a task was started);
- ``error``: a 503 from a load balancer or reverse proxy, request not forwarded;
- ``slow``: the reply comes ``slow_seconds`` late.

Each request opens its own upstream connection and both sides are closed after
one exchange (``Connection: close``), which keeps the proxy simple; pyvmomi
reconnects by itself. Faults are drawn from a seeded random generator, so a
run can be repeated; the counts of what was injected, per SOAP method, are kept
for the tests' reports. Plain HTTP only; it is a test device, not a product part.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

_METHOD = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class FaultRates:
    drop_before: float = 0.0
    drop_after: float = 0.0
    error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 1.0
    # Long polls (WaitForUpdatesEx) may be cut too; False leaves them alone.
    include_waits: bool = True

    def __post_init__(self) -> None:
        total = self.drop_before + self.drop_after + self.error
        if not all(0 <= r <= 1 for r in (self.drop_before, self.drop_after, self.error, self.slow)):
            raise ValueError("fault rates are fractions between 0 and 1")
        if total > 1:
            raise ValueError(f"drop_before + drop_after + error is {total}, more than 1")


@dataclass
class FaultStats:
    requests: Counter[str] = field(default_factory=Counter)
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)

    def total(self, kind: str | None = None) -> int:
        return sum(n for (k, _), n in self.injected.items() if kind is None or k == kind)


class FaultProxy:
    """``async with FaultProxy(upstream_url, rates) as proxy: proxy.url``"""

    def __init__(self, upstream_url: str, rates: FaultRates, seed: int = 0, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"the fault proxy forwards to plain http://host:port URLs, not {upstream_url!r}")
        self._upstream = (parts.hostname, parts.port)
        self._path = parts.path
        self._host = host
        self.rates = rates
        self.stats = FaultStats()
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, self._host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(("http", f"{self._host}:{port}", self._path, "", ""))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _draw(self, method: str) -> tuple[str | None, bool]:
        """The fault for this request (or None), and whether to delay it."""
        if method == "WaitForUpdatesEx" and not self.rates.include_waits:
            return None, False
        r = self._random.random()
        fault = None
        for kind, rate in (
            ("drop_before", self.rates.drop_before),
            ("drop_after", self.rates.drop_after),
            ("error", self.rates.error),
        ):
            if r < rate:
                fault = kind
                break
            r -= rate
        return fault, self._random.random() < self.rates.slow

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._exchange(client_r, client_w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # the proxy is closing under a long poll: drop it
            pass
        finally:
            client_w.close()

    async def _exchange(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        head = await client_r.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            return
        lines = head.decode("latin-1").split("\r\n")
        headers = [line for line in lines[1:] if line]
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0
        )
        body = await client_r.readexactly(length) if length else b""
        found = _METHOD.search(body)
        method = found.group(1).decode() if found else lines[0].split(" ")[0]
        self.stats.requests[method] += 1

        fault, slow = self._draw(method)
        if slow:
            self.stats.injected[("slow", method)] += 1
            await asyncio.sleep(self.rates.slow_seconds)
        if fault is not None:
            self.stats.injected[(fault, method)] += 1
        if fault == "drop_before":
            return
        if fault == "error":
            client_w.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 19\r\nConnection: close\r\n\r\nService Unavailable"
            )
            await client_w.drain()
            return

        kept = [h for h in headers if not h.lower().startswith(("connection:", "keep-alive:"))]
        request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
        up_r, up_w = await asyncio.open_connection(*self._upstream)
        try:
            up_w.write(request)
            await up_w.drain()
            reply = await up_r.read()  # upstream closes after one reply
        finally:
            up_w.close()
        if fault == "drop_after":
            return
        client_w.write(reply)
        await client_w.drain()
