"""The JSON API behind the page: grades as `predict` does, rejects with the right status."""

import base64
import io
import socket
import tempfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from drgrade.cli import main
from drgrade.grades import GRADE_NAMES
from drgrade.inference.grader import GraderBase
from drgrade.inference.loader import load_grader
from drgrade.serve.app import create_app, listen_socket, socket_url


@pytest.fixture(scope="module")
def grader(demo_run):
    return load_grader(demo_run, device="cpu")


def local_client(app) -> TestClient:
    """A client that calls the app as a browser on this machine does (Host: 127.0.0.1)."""
    return TestClient(app, base_url="http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def client(grader, demo_run):
    return local_client(create_app(grader, str(demo_run), max_upload_mb=1))


def upload(client, name: str, data: bytes, content_type: str = "image/jpeg"):
    return client.post("/api/grade", files={"file": (name, data, content_type)})


def decoded_png(data_url: str) -> Image.Image:
    header, payload = data_url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_grades_a_real_photograph_as_predict_does(client, grader, photograph):
    response = upload(client, photograph.name, photograph.read_bytes())
    assert response.status_code == 200, response.text
    result = response.json()
    expected = grader.predict_image(photograph)
    assert result["image"] == photograph.name
    assert result["grade"] == expected.grade
    assert result["grade_name"] == GRADE_NAMES[expected.grade]
    assert result["referable"] == (expected.grade >= 2) == expected.referable
    assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert result["score"] is None and result["head"] == "classification"
    heat_map = decoded_png(result["heat_map"])
    # The photograph beside its overlay, under a caption line (explain.render).
    assert heat_map.width > 2 * heat_map.height - 100 and heat_map.height >= 256
    assert result["heat_map_method"] == "gradcam"


def test_rejects_a_text_file_with_415(client, tmp_path):
    response = upload(client, "notes.txt", b"not a photograph\n", "text/plain")
    assert response.status_code == 415
    assert response.json()["detail"].startswith("notes.txt: not an image")


def test_rejects_an_all_black_image_with_422(client, black_png):
    response = upload(client, black_png.name, black_png.read_bytes(), "image/png")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "black.png" in detail and "fundus" in detail and "blank" in detail


def test_rejects_a_screenshot_with_422(client, tmp_path):
    # White with dark text, bright to the corners: not a colour fundus photograph.
    image = Image.new("RGB", (640, 400), (246, 246, 246))
    ImageDraw.Draw(image).text((40, 40), "Patient list  2026-11-28", fill=(20, 20, 20),
                               font_size=36)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    response = upload(client, "screen.png", buffer.getvalue(), "image/png")
    assert response.status_code == 422
    assert "screen.png" in response.json()["detail"]
    assert "no fundus found (no dark border, and not red" in response.json()["detail"]


def test_rejects_a_truncated_photograph_with_422(client, photograph):
    data = photograph.read_bytes()
    response = upload(client, "cut.jpg", data[: len(data) // 3])
    assert response.status_code == 422
    assert "truncated" in response.json()["detail"]


def test_rejects_uploads_over_the_limit_with_413(client, photograph):
    big = photograph.read_bytes() * 3  # 1.2 MB against the client's 1 MB limit
    response = upload(client, "big.jpg", big)
    assert response.status_code == 413
    assert "1 MB limit" in response.json()["detail"]
    # A file just over the limit, whose form still fits the body allowance, is refused too.
    response = upload(client, "just-over.jpg", big[: 2**20 + 1])
    assert response.status_code == 413
    # A body with no Content-Length (chunked) is counted as it arrives and stopped.
    chunks = (b"x" * 2**16 for _ in range(40))
    response = client.post("/api/grade", content=chunks,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413


def test_missing_or_empty_file_is_400(client):
    assert client.post("/api/grade").status_code == 400
    response = upload(client, "empty.jpg", b"")
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_uploads_leave_nothing_on_disk(grader, photograph, monkeypatch):
    # Starlette spools uploads over 1 MB to a temporary file; every way to make one fails.
    made = []

    def no_file(*args, **kwargs):
        made.append(args)
        raise AssertionError("a temporary file was made")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_file)
    client = local_client(create_app(grader, "model", max_upload_mb=4))
    # 2.4 MB: the photograph with trailing bytes, which JPEG decoders ignore.
    data = photograph.read_bytes() * 6
    response = upload(client, photograph.name, data)
    assert response.status_code == 200, response.text
    assert response.json()["grade"] == grader.predict_image(photograph).grade
    assert made == []


def test_page_and_model_info(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("static/app.js", "static/style.css"):
        text = client.get("/" + asset).text
        assert asset.rsplit("/", 1)[1] in page.text
        # Nothing from elsewhere: the page must work with no internet.
        assert "http://" not in text and "https://" not in text
    info = client.get("/api/model").json()
    assert info["grades"] == list(GRADE_NAMES) and info["referable_grade"] == 2
    assert info["max_upload_bytes"] == 2**20 and info["heat_maps"] is True


def test_regression_checkpoint_gives_the_score(regression_run, photograph):
    grader = load_grader(regression_run, device="cpu")
    client = local_client(create_app(grader, "regression"))
    result = upload(client, photograph.name, photograph.read_bytes()).json()
    expected = grader.predict_image(photograph)
    assert result["grade"] == expected.grade and result["probabilities"] is None
    assert result["score"] == pytest.approx(expected.score, abs=1e-6)
    assert len(result["cut_points"]) == 4
    assert decoded_png(result["heat_map"]).width > 0


class GradientFree(GraderBase):
    """A grader that only gives outputs, as the ONNX one does."""

    def __init__(self, grader):
        super().__init__(grader.card)
        self.inner = grader

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.probabilities(batch)


def test_graders_without_gradients_grade_without_heat_maps(grader, photograph):
    client = local_client(create_app(GradientFree(grader), "onnx-like"))
    result = upload(client, photograph.name, photograph.read_bytes()).json()
    assert result["grade"] == grader.predict_image(photograph).grade
    assert result["heat_map"] is None and "ONNX" in result["heat_map_note"]
    assert client.get("/api/model").json()["heat_maps"] is False


def test_listen_socket_picks_a_free_port_on_loopback():
    sock = listen_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and socket_url(sock) == f"http://127.0.0.1:{port}/"
    finally:
        sock.close()


def test_cli_errors_are_clear(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The port is checked before the model is loaded, so none is needed here.
        assert main(["serve", str(tmp_path / "no-model"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err
    # Every option is checked before the model loads (there is none at tmp_path).
    for option, value, message in [
        ("--max-upload-mb", "0", "--max-upload-mb must be positive"),
        ("--port", "99999", "--port 99999: not a TCP port; choose one from 1 to 65535"),
        ("--port", "-1", "--port -1: not a TCP port"),
        ("--max-concurrent", "0", "--max-concurrent must be at least 1"),
        ("--read-timeout", "0", "--read-timeout must be a positive number of seconds"),
        ("--allowed-host", "http://grader.lan/", "--allowed-host 'http://grader.lan/': give a"),
    ]:
        assert main(["serve", str(tmp_path), option, value]) == 2
        assert message in capsys.readouterr().err
