"""A fault-injecting HTTP proxy to put between pke-vsphere and the vCenter simulator.

It forwards each SOAP request to the simulator and, at configurable rates,
misbehaves the way a real vCenter or the network in front of it does:

- ``drop_before``: the connection is closed before the request reaches vCenter;
- ``drop_after``: vCenter handles the request, but the connection is closed
  before the reply (the caller cannot know whether a task was started);
- ``error``: a 503 from a load balancer or reverse proxy, request not forwarded;
- ``slow``: the reply comes ``slow_seconds`` late.

Connections are kept alive, as vCenter's reverse proxy keeps them: each client
connection gets an upstream connection of its own, opened with its first
request and used for every later one, so a client that pools its connections
reuses them here too. A dropped exchange closes both. Faults are drawn from a
seeded random generator, so a run can be repeated; the counts of what was injected, per SOAP method, are kept
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
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                upstream, keep = await self._exchange(client_r, client_w, upstream)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # the proxy is closing under a long poll: drop it
            pass
        finally:
            client_w.close()
            if upstream is not None:
                upstream[1].close()

    async def _exchange(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        """One request and its reply: the upstream connection for the next, and
        whether the client's connection stays open for one."""
        request = await _message(client_r)
        if request is None:
            return upstream, False
        head, body, close = request
        found = _METHOD.search(body)
        method = found.group(1).decode() if found else head.split(b" ", 1)[0].decode("latin-1")
        self.stats.requests[method] += 1

        fault, slow = self._draw(method)
        if slow:
            self.stats.injected[("slow", method)] += 1
            await asyncio.sleep(self.rates.slow_seconds)
        if fault is not None:
            self.stats.injected[(fault, method)] += 1
        if fault == "drop_before":
            return upstream, False
        if fault == "error":
            client_w.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 19\r\nConnection: close\r\n\r\nService Unavailable"
            )
            await client_w.drain()
            return upstream, False

        if upstream is None:
            upstream = await asyncio.open_connection(*self._upstream)
        up_r, up_w = upstream
        up_w.write(head + body)
        await up_w.drain()
        reply = await _message(up_r)
        if reply is None:  # upstream closed without a reply: so does the proxy
            return upstream, False
        if fault == "drop_after":
            return upstream, False
        reply_head, reply_body, reply_close = reply
        client_w.write(reply_head + reply_body)
        await client_w.drain()
        return upstream, not (close or reply_close)


async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bool] | None:
    """One HTTP/1.1 message as it came (head, body) and whether its connection
    closes after it; None at the end of the stream before a message began."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    if len(head) > _HEAD_LIMIT:
        raise ConnectionError("header too large")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip().lower()
    close = fields.get("connection") == "close"
    if "content-length" in fields:
        return head, await reader.readexactly(int(fields["content-length"])), close
    if fields.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            chunks.append(size_line)
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    chunks.append(trailer)
                chunks.append(trailer)
                return head, b"".join(chunks), close
            chunks.append(await reader.readexactly(size + 2))
    if head.startswith(b"HTTP/"):  # a reply without a length ends with its connection
        return head, await reader.read(), True
    return head, b"", close
