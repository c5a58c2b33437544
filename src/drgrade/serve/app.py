"""`drgrade serve`: a web page (and its JSON API) to grade one fundus photograph at a time.

GET /            the page (static/index.html, static/app.js, static/style.css)
GET /api/model   what the page shows about the model: head, grade names, upload limit
POST /api/grade  multipart form, field `file`: grade, probabilities or score, referable
                 flag and the Grad-CAM heat map as a PNG data URL; errors are
                 {"detail": message} with 400 (no or empty file), 413 (too large),
                 415 (not an image) or 422 (an image, but not a gradable fundus photograph)

Nothing is fetched from elsewhere (no CDN): the page works on a machine with no internet.
Uploads are decoded from a temporary folder that is deleted before the answer is sent.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drgrade.errors import DrgradeError
from drgrade.inference.grader import GraderBase
from drgrade.serve.grading import PhotographGrader, UploadRejected, display_name

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
# Room for the multipart boundary and part headers around a file of the full limit.
FORM_OVERHEAD = 64 * 1024
SECURITY_HEADERS = {
    # The page needs only itself; heat maps arrive as data: URLs.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


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
            await JSONResponse({"detail": self.message}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException from body parsing on as the response.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def upload_limit(max_upload_mb: float) -> int:
    """--max-upload-mb in bytes, checked."""
    if not max_upload_mb > 0:
        raise DrgradeError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    return int(max_upload_mb * 2**20)


def create_app(grader: GraderBase, model_name: str = "model",
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               explain_method: str = "gradcam") -> FastAPI:
    """The web app around a loaded grader."""
    max_bytes = upload_limit(max_upload_mb)
    photographs = PhotographGrader(grader, explain_method)
    # Swagger/ReDoc pages load their scripts from a CDN, which users may not reach.
    app = FastAPI(title="drgrade", docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=max_bytes + FORM_OVERHEAD,
                       limit_text=megabytes(max_bytes))

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
    def grade(file: Annotated[UploadFile | None, File()] = None) -> dict:
        """Grade one photograph sent as the multipart form field `file`."""
        if file is None:
            raise HTTPException(400, "no photograph in the request: send it as the multipart "
                                     "form field 'file'")
        # The body limit leaves room for the form around the file; the file gets none.
        data = file.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"{display_name(file.filename)}: larger than the "
                                     f"{megabytes(max_bytes)} limit (drgrade serve "
                                     f"--max-upload-mb)")
        try:
            return photographs.grade(data, file.filename)
        except UploadRejected as error:
            raise HTTPException(error.status, str(error)) from None

    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); a clear error if that fails."""
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


def serve(model: Path | str, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, explain_method: str = "gradcam") -> None:
    """Serve the page for `model` (run folder, .ckpt or .onnx) until interrupted."""
    import uvicorn

    from drgrade.inference.grader import load_grader

    upload_limit(max_upload_mb)
    # Bound before the model loads: a taken port fails in a moment, not after seconds.
    sock = listen_socket(host, port)
    try:
        app = create_app(load_grader(model), str(model), max_upload_mb, explain_method)
        if not is_loopback(sock):
            print(f"warning: listening on {host}: anyone who can reach this machine can upload "
                  f"photographs (there is no login); use --host 127.0.0.1 to keep it local",
                  file=sys.stderr)
        print(f"drgrade: grading with {model} at {socket_url(sock)} (Ctrl+C stops)", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
        server.run(sockets=[sock])
    finally:
        sock.close()
