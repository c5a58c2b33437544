"""`drgrade serve`: a web page (and its JSON API) to grade one fundus photograph at a time.

GET /            the page (static/index.html, static/app.js, static/style.css)
GET /api/model   what the page shows about the model: head, grade names, upload limit
POST /api/grade  multipart form, field `file`: grade, probabilities or score, referable
                 flag and the Grad-CAM heat map as a PNG data URL; errors are
                 {"detail": message} with 400 (no or empty file, a malformed form, an
                 unknown Host), 403 (a post from another site), 408 (the body stopped
                 arriving), 413 (too large, in bytes or pixels), 415 (not a form, or not an
                 image), 422 (an image, but not a gradable fundus photograph) or 503 (busy)

Nothing is fetched from elsewhere (no CDN): the page works on a machine with no internet.
Uploads are held in memory only (never spooled to a temporary file) and dropped once graded.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import sys
from collections.abc import Iterable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from drgrade.errors import DrgradeError
from drgrade.inference.grader import GraderBase
from drgrade.serve.grading import PhotographGrader, UploadRejected, display_name
from drgrade.serve.guards import (
    LOOPBACK_NAMES,
    Busy,
    GradingSlots,
    HostCheck,
    ReadTimeout,
    UploadLimit,
    allowed_host,
    megabytes,
)

if TYPE_CHECKING:
    import uvicorn

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_READ_TIMEOUT = 30.0  # seconds a request body may stall before a 408
DEFAULT_MAX_CONCURRENT = 2  # gradings at once: each decodes a photograph of up to 80 MP
DEFAULT_QUEUE_TIMEOUT = 60.0  # seconds an upload waits for its turn before a 503
# Room for the multipart boundary and part headers around a file of the full limit.
FORM_OVERHEAD = 64 * 1024
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
NO_FILE = "no photograph in the request: send it as the multipart form field 'file'"
SECURITY_HEADERS = {
    # The page needs only itself; heat maps arrive as data: URLs.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes and name of the form field `file`, held in memory; HTTPException if none."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media_type:
        raise HTTPException(400, NO_FILE)
    if media_type != "multipart/form-data":
        raise HTTPException(415, f"the request is {media_type}, not a form: send the "
                                 f"photograph as the field 'file' of a multipart/form-data "
                                 f"form (curl -F file=@photo.jpg)")
    async with aclosing(request.stream()) as stream:
        parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16)
        # Starlette spools a file over 1 MB to a temporary file; UploadLimit already caps
        # the whole body at this, so the upload stays in memory and never touches the disk.
        parser.spool_max_size = max_bytes + FORM_OVERHEAD
        try:
            form = await parser.parse()
        except MultiPartException as error:
            raise HTTPException(400, f"the form could not be read ({error.message}); "
                                     f"{NO_FILE}") from None
        except ClientDisconnect:  # nobody is left to answer; ends the request quietly
            raise HTTPException(400, "the upload was cut off") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):  # no such field, or a text field
            raise HTTPException(400, NO_FILE)
        # The body limit leaves room for the form around the file; the file gets none.
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"{display_name(upload.filename)}: larger than the "
                                     f"{megabytes(max_bytes)} limit (drgrade serve "
                                     f"--max-upload-mb)")
        return data, upload.filename
    finally:
        await form.close()


def check_options(max_upload_mb: float, allowed_hosts: Iterable[str], max_concurrent: int,
                  read_timeout: float) -> tuple[int, set[str]]:
    """--max-upload-mb in bytes and the host names to answer to; every option checked."""
    if not max_upload_mb > 0:
        raise DrgradeError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if max_concurrent < 1:
        raise DrgradeError(f"--max-concurrent must be at least 1, got {max_concurrent}")
    if not read_timeout > 0:
        raise DrgradeError(f"--read-timeout must be a positive number of seconds, "
                           f"got {read_timeout}")
    hosts = {*LOOPBACK_NAMES, *(allowed_host(name) for name in allowed_hosts)}
    return int(max_upload_mb * 2**20), hosts


def create_app(grader: GraderBase, model_name: str = "model",
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, explain_method: str = "gradcam",
               *, allowed_hosts: Iterable[str] = (),
               max_concurrent: int = DEFAULT_MAX_CONCURRENT,
               read_timeout: float = DEFAULT_READ_TIMEOUT,
               queue_timeout: float = DEFAULT_QUEUE_TIMEOUT) -> FastAPI:
    """The web app around a loaded grader, answering to loopback names and `allowed_hosts`."""
    max_bytes, hosts = check_options(max_upload_mb, allowed_hosts, max_concurrent, read_timeout)
    photographs = PhotographGrader(grader, explain_method)
    slots = GradingSlots(max_concurrent, queue_timeout)
    # Swagger/ReDoc pages load their scripts from a CDN, which users may not reach.
    app = FastAPI(title="drgrade", docs_url=None, redoc_url=None)
    # Each add_middleware wraps the ones before: a request meets HostCheck first.
    app.add_middleware(ReadTimeout, seconds=read_timeout)
    app.add_middleware(UploadLimit, max_bytes=max_bytes + FORM_OVERHEAD,
                       limit_text=megabytes(max_bytes))
    app.add_middleware(HostCheck, hosts=hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        """Every answer says: this page loads nothing from elsewhere."""
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The page."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/model")
    def model() -> dict:
        """The model behind the page and the upload limit."""
        return {"model": model_name, "max_upload_bytes": max_bytes} | photographs.info()

    @app.post("/api/grade")
    async def grade(request: Request) -> dict:
        """Grade one photograph sent as the multipart form field `file`."""
        # The form is read here, not declared as a parameter: FastAPI would answer a
        # malformed request with its validation list and spool the file to disk.
        data, filename = await read_upload(request, max_bytes)
        try:
            return await slots.run(photographs.grade, data, filename)
        except UploadRejected as error:
            raise HTTPException(error.status, str(error)) from None
        except Busy:
            raise HTTPException(503, (
                f"{display_name(filename)}: the server is busy (it grades {max_concurrent} "
                f"photograph(s) at a time, and this one waited {queue_timeout:g} s for its "
                f"turn); try again shortly"),
                headers={"retry-after": str(math.ceil(queue_timeout))}) from None

    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); a clear error if that fails."""
    if not 0 <= port <= 65535:  # getaddrinfo keeps 16 bits: 99999 would be port 34463
        raise DrgradeError(f"--port {port}: not a TCP port; choose one from 1 to 65535 "
                           f"(0: any free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as error:
        raise DrgradeError(f"--host {host}: not an address to listen on ({error})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise DrgradeError(f"cannot listen on {host} port {port} ({error.strerror}): choose "
                           f"another --port, or stop what is using it") from None
    return sock


def socket_url(sock: socket.socket) -> str:
    """The http:// URL of a bound socket."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        # All interfaces: the local loopback is the one address sure to work here.
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    """Whether only this machine can reach the socket."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    """The uvicorn server `serve` runs the app in."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="info"))


def serve(model: Path | str, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, explain_method: str = "gradcam",
          allowed_hosts: Iterable[str] = (), max_concurrent: int = DEFAULT_MAX_CONCURRENT,
          read_timeout: float = DEFAULT_READ_TIMEOUT) -> None:
    """Serve the page for `model` (run folder, .ckpt or .onnx) until interrupted."""
    from drgrade.inference.loader import load_grader

    # The address it listens on is a name browsers may use too (unless it is every address).
    allowed_hosts = [*allowed_hosts, *([] if host in WILDCARD_HOSTS else [host])]
    _, hosts = check_options(max_upload_mb, allowed_hosts, max_concurrent, read_timeout)
    # Bound before the model loads: a taken port fails in a moment, not after seconds.
    sock = listen_socket(host, port)
    try:
        app = create_app(load_grader(model), str(model), max_upload_mb, explain_method,
                         allowed_hosts=allowed_hosts, max_concurrent=max_concurrent,
                         read_timeout=read_timeout)
        if not is_loopback(sock):
            print(f"warning: listening on {host}: anyone who can reach this machine can upload "
                  f"photographs (there is no login); use --host 127.0.0.1 to keep it local. "
                  f"Browsers may use only the names {', '.join(sorted(hosts))}; add the "
                  f"name or address others type with --allowed-host",
                  file=sys.stderr)
        print(f"drgrade: grading with {model} at {socket_url(sock)} (Ctrl+C stops)", flush=True)
        uvicorn_server(app).run(sockets=[sock])
    finally:
        sock.close()
