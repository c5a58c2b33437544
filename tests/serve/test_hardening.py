"""The web page under abuse: bombs, bursts, stalled bodies, other hosts, malformed requests.

A stand-in network (uniform probabilities) behind the real preprocessing keeps these fast;
the tests that need concurrency run the app in uvicorn on a free loopback port, as
`drgrade serve` does, and make a bounded number of requests to 127.0.0.1 only.
"""

import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from drgrade.data.photographs import Photograph
from drgrade.inference.grader import GraderBase
from drgrade.model_card import ModelCard
from drgrade.serve.app import create_app, listen_socket, uvicorn_server

LOCAL = "http://127.0.0.1:8000"
CARD = ModelCard(arch="resnet18", head="classification", image_size=32, mean=(0.5,) * 3,
                 std=(0.5,) * 3, prepare={"size": 64, "enhance": "none"})


class Uniform(GraderBase):
    """The real preprocessing before a network that finds every grade equally likely."""

    def __init__(self):
        super().__init__(CARD)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 5), 0.2, np.float32)


class Slow(Uniform):
    """Decoding that takes `seconds` and records how many decode at once."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = self.peak = 0

    def photograph(self, source) -> Photograph:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return Photograph(Image.new("RGB", (64, 64), (190, 95, 40)), "RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Uniform(), "uniform"), base_url=LOCAL)


@contextmanager
def running(app) -> Iterator[int]:
    """`app` served by uvicorn as `drgrade serve` runs it, on a free loopback port."""
    sock = listen_socket("127.0.0.1", 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def post_photographs(port: int, count: int) -> list[httpx.Response]:
    """`count` uploads at once to the server on `port`."""
    def post(i: int) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{port}/api/grade", timeout=30,
                          files={"file": (f"photo-{i}.png", b"stand-in", "image/png")})

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


# --- decompression bombs -------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_with_413_before_it_is_decoded(client, monkeypatch,
                                                                        bilevel_png):
    def load(self):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    data = bilevel_png(13000, 13000)  # 1.2 GB as RGB
    response = client.post("/api/grade", files={"file": ("bomb.png", data, "image/png")})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith("bomb.png: the image is 13000x13000 px (169.0 megapixels), over "
                             "the 80-megapixel limit")
    assert "DRGRADE_MAX_MEGAPIXELS=169" in detail


# --- bursts --------------------------------------------------------------------------------


def test_at_most_max_concurrent_photographs_are_graded_at_once():
    grader = Slow(seconds=0.3)
    with running(create_app(grader, max_concurrent=2)) as port:
        responses = post_photographs(port, 6)
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert grader.peak == 2


def test_an_upload_that_waits_too_long_for_a_slot_gets_503():
    grader = Slow(seconds=1.0)
    with running(create_app(grader, max_concurrent=1, queue_timeout=0.2)) as port:
        responses = sorted(post_photographs(port, 2), key=lambda r: r.status_code)
    assert [r.status_code for r in responses] == [200, 503]
    busy = responses[1]
    assert busy.json()["detail"].split(": ", 1)[1] == (
        "the server is busy (it grades 1 photograph(s) at a time, and this one waited 0.2 s "
        "for its turn); try again shortly")
    assert busy.headers["retry-after"] == "1"


# --- stalled bodies ------------------------------------------------------------------------


def test_a_stalled_upload_gets_408_and_its_connection_is_closed():
    with running(create_app(Uniform(), read_timeout=0.5)) as port, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        # Half a body: 100 kB announced, a few bytes sent, then nothing.
        connection.sendall(b"POST /api/grade HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: 100000\r\n\r\n--b\r\n")
        started = time.monotonic()
        answer = b""
        while chunk := connection.recv(65536):  # until the server hangs up
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"the upload stopped arriving for 0.5 s" in answer
    assert waited < 4  # uvicorn's keep-alive timeout alone would have closed it after 5 s


# --- hosts and origins ---------------------------------------------------------------------


def test_only_the_host_names_it_serves_are_answered():
    client = TestClient(create_app(Uniform(), allowed_hosts=["Grader.Lan"]))
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "grader.lan",
                 "GRADER.LAN:80"):
        assert client.get("/api/model", headers={"host": host}).status_code == 200, host
    # DNS rebinding: another site's name pointed at 127.0.0.1 arrives as its own Host.
    for host in ("rebind.example", "rebind.example:8000", "127.0.0.1.rebind.example",
                 "0.0.0.0:8000", ""):
        response = client.get("/", headers={"host": host})
        assert response.status_code == 400, host
        detail = response.json()["detail"]
        assert f"Host {host!r} is not a name this server answers to" in detail
        assert "--allowed-host" in detail
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_posts_from_other_sites_are_refused(client):
    black = png(Image.new("RGB", (200, 200)))

    def post(origin: str | None) -> httpx.Response:
        headers = {"origin": origin} if origin else {}
        return client.post("/api/grade", headers=headers,
                           files={"file": ("black.png", black, "image/png")})

    for origin in ("http://evil.example", "http://localhost:8000", "http://127.0.0.1:9000",
                   "https://127.0.0.1:8000", "null"):
        response = post(origin)
        assert response.status_code == 403, origin
        assert f"a request from another site ({origin}) was refused" in response.json()["detail"]
    # The page itself, and tools that send no Origin, get through to the grading (422: black).
    assert post(LOCAL).status_code == 422
    assert post(None).status_code == 422
    assert client.get("/api/model", headers={"origin": "http://evil.example"}).status_code == 200


# --- malformed requests --------------------------------------------------------------------


@pytest.mark.parametrize(("request_args", "status", "message"), [
    ({"json": {"file": "photo.jpg"}}, 415, "the request is application/json, not a form"),
    ({"data": {"file": "photo.jpg"}}, 415, "application/x-www-form-urlencoded, not a form"),
    ({"files": {"photo": ("a.png", b"x", "image/png")}}, 400, "no photograph in the request"),
    ({"data": {"file": "photo.jpg"}, "files": {"other": ("a.png", b"x")}}, 400,
     "no photograph in the request: send it as the multipart form field 'file'"),
    ({"files": [("file", ("a.png", b"x")), ("file", ("b.png", b"y"))]}, 400,
     "the form could not be read (Too many files"),
    ({"content": b"--b\r\n", "headers": {"content-type": "multipart/form-data"}}, 400,
     "the form could not be read (Missing boundary in multipart.)"),
])
def test_malformed_requests_get_one_line_messages(client, request_args, status, message):
    response = client.post("/api/grade", **request_args)
    assert response.status_code == status
    detail = response.json()["detail"]
    # drgrade's own sentence, not FastAPI's validation list.
    assert isinstance(detail, str) and "\n" not in detail and message in detail, detail
