"""What `drgrade serve` refuses and limits, as ASGI middleware and a grading queue.

Too large a body (413), a Host it does not answer to (400), a post from another site
(403), a body that stops arriving (408), and more gradings at once than memory allows (a
queue; 503 after a wait).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drgrade.errors import DrgradeError

T = TypeVar("T")
# Names every server answers to; the bound address and --allowed-host add more.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Sent with answers given before the body was read: uvicorn then closes the connection
# instead of waiting (up to its keep-alive timeout, or longer) for the rest of the body.
HANG_UP = {"connection": "close"}


def megabytes(n_bytes: int) -> str:
    """A size for messages, e.g. '20 MB'."""
    return f"{n_bytes / 2**20:g} MB"


class UploadLimit:
    """ASGI middleware: 413 for request bodies over `max_bytes`, declared or as they arrive.

    A declared Content-Length over the limit is refused before any of the body is read;
    a body without one (chunked) is counted and stopped at the limit, so a client can never
    make the server hold more than the limit in memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str):
        self.app = app
        self.max_bytes = max_bytes
        self.message = (f"the upload is larger than the {limit_text} limit "
                        f"(drgrade serve --max-upload-mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, 413, HANG_UP)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's read of the form: it becomes the answer.
                    raise HTTPException(413, self.message, headers=HANG_UP)
            return message

        await self.app(scope, counted, send)


def host_name(value: str) -> str:
    """The host of a Host header or --allowed-host value: no port, no brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_host(value: str) -> str:
    """An --allowed-host value as a host name, checked."""
    name = host_name(value)
    if not name or any(c in value for c in "/@ "):
        raise DrgradeError(f"--allowed-host {value!r}: give a host name or address as browsers "
                           f"type it (e.g. grader.clinic.lan or 192.168.1.20), without "
                           f"http:// or a path")
    return name


class HostCheck:
    """ASGI middleware: 400 for a Host the server does not answer to, 403 for cross-site posts.

    A page on any site can point its own host name at 127.0.0.1 (DNS rebinding) and so
    reach a loopback server, but the browser's Host header still names that site; and any
    page can post a form to any address, but the browser's Origin header says where from.
    """

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app: ASGIApp, hosts: Iterable[str]):
        self.app = app
        self.hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        if host_name(host) not in self.hosts:
            names = ", ".join(sorted(self.hosts))
            response = JSONResponse({"detail": (
                f"Host {host!r} is not a name this server answers to ({names}); to open the "
                f"page under that name, restart drgrade serve with --allowed-host "
                f"{host_name(host) or 'NAME'}")}, 400)
        elif (scope["method"] not in self.SAFE_METHODS and origin is not None
              and origin.lower() != f"{scope['scheme']}://{host.lower()}"):
            response = JSONResponse({"detail": (
                f"a request from another site ({origin}) was refused: upload the photograph "
                f"on the page at {scope['scheme']}://{host}/")}, 403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class ReadTimeout:
    """ASGI middleware: 408 when a request body stops arriving for `seconds`.

    uvicorn's keep-alive timeout covers idle connections between requests only: a client
    that sends half a body and waits would hold its connection open for as long as it likes.
    """

    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed() -> Message:
            nonlocal body_done
            if body_done:  # later calls wait for the client to leave, which may take long
                return await receive()
            try:
                with anyio.fail_after(self.seconds):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the upload stopped arriving for {self.seconds:g} s "
                                         f"(drgrade serve --read-timeout); send it again",
                                    headers=HANG_UP) from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, timed, send)


class Busy(Exception):
    """No grading slot came free in time."""


class GradingSlots:
    """At most `size` gradings at once, each in a worker thread; others wait up to `timeout` s.

    Decoding takes up to 3 bytes a pixel (240 MB at the 80 MP limit): 50 IDRiD photographs
    posted at once took the demo model's server from 0.93 to 2.3 GB, 2 at a time to 1.1 GB.
    The wait is here, not in threads blocked on a lock: anyio reuses idle worker threads, so
    only about `size` of them ever grade, while each thread that grades keeps its peak in
    its own malloc arena (a lock in 40 worker threads let the same burst reach 2.2 GB).
    """

    def __init__(self, size: int, timeout: float):
        self.timeout = timeout
        self.semaphore = anyio.Semaphore(size)

    async def run(self, function: Callable[..., T], *args) -> T:
        """`function(*args)` in a worker thread once a slot is free; `Busy` if none is."""
        try:
            with anyio.fail_after(self.timeout):
                await self.semaphore.acquire()
        except TimeoutError:
            raise Busy from None
        try:
            return await anyio.to_thread.run_sync(function, *args)
        finally:
            self.semaphore.release()
