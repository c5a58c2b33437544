"""Dataset download: the real code path, served from local files (no network here)."""

import errno
import http.client
import http.server
import io
import threading
import urllib.request

import pytest

from drgrade import atomic
from drgrade.cli import main
from drgrade.data import download as dl
from drgrade.errors import DrgradeError


@pytest.fixture
def local_npz(shared_data):
    return shared_data / "retinamnist" / "retinamnist.npz"


def test_the_recorded_checksum_is_the_official_files(local_npz):
    # ../shared holds the official file (its README gives the same MD5).
    assert dl.md5_of(local_npz) == dl.RETINAMNIST[28].md5


def test_download_verifies_and_keeps_a_verified_file(local_npz, tmp_path, monkeypatch):
    assert dl.RETINAMNIST[64].name == "retinamnist_64.npz"  # Zenodo's ?download=1 dropped
    remote = dl.Remote(local_npz.as_uri(), dl.RETINAMNIST[28].md5)
    path = dl.fetch(remote, tmp_path / "data", progress=False)
    assert path == tmp_path / "data" / "retinamnist.npz"
    assert path.read_bytes() == local_npz.read_bytes()
    assert list(path.parent.iterdir()) == [path]  # no .partial left

    def offline(*args, **kwargs):
        raise AssertionError("a verified file must not be fetched again")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert dl.fetch(remote, tmp_path / "data", progress=False) == path


def test_a_wrong_checksum_deletes_the_download(local_npz, tmp_path):
    remote = dl.Remote(local_npz.as_uri(), "0" * 32)
    with pytest.raises(DrgradeError, match="is not the published 0{32}; the download was deleted"):
        dl.fetch(remote, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_different_file_in_the_way_is_reported_not_overwritten(local_npz, tmp_path):
    mine = tmp_path / "retinamnist.npz"
    mine.write_bytes(b"my own notes")
    with pytest.raises(DrgradeError, match="retinamnist.npz is there but its MD5"):
        dl.fetch(dl.Remote(local_npz.as_uri(), dl.RETINAMNIST[28].md5), tmp_path, progress=False)
    assert mine.read_bytes() == b"my own notes"


def test_unreachable_server_says_where_to_put_the_file(tmp_path):
    remote = dl.Remote("http://127.0.0.1:9/retinamnist.npz", dl.RETINAMNIST[28].md5)
    with pytest.raises(DrgradeError) as caught:
        dl.fetch(remote, tmp_path, progress=False)
    assert f"put it at {tmp_path / 'retinamnist.npz'}" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_datasets_behind_a_login_explain_how_to_get_them(tmp_path):
    with pytest.raises(DrgradeError, match="kaggle competitions download -c "
                                           "diabetic-retinopathy-detection"):
        dl.download("eyepacs", tmp_path)
    with pytest.raises(DrgradeError, match="ieee-dataport.org"):
        dl.download("idrid", tmp_path)
    with pytest.raises(DrgradeError, match="comes at 28, 64, 128, 224 px, not 32"):
        dl.download("retinamnist", tmp_path, size=32)


def test_download_command(local_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dl.RETINAMNIST, 28, dl.Remote(local_npz.as_uri(), dl.RETINAMNIST[28].md5))
    assert main(["download", "retinamnist", "--out", str(tmp_path)]) == 0
    assert "retinamnist.npz: verified (MD5)" in capsys.readouterr().out
    assert main(["download", "aptos", "--out", str(tmp_path)]) == 2
    assert "aptos2019-blindness-detection" in capsys.readouterr().err


class BrokenResponse(io.BytesIO):
    """A download whose connection fails with `error` after its first 10 bytes."""

    headers: dict = {}

    def __init__(self, error: Exception):
        super().__init__(b"x" * 100)
        self.error = error

    def read(self, size: int = -1) -> bytes:
        if self.tell():
            raise self.error
        return super().read(10)


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   http.client.IncompleteRead(b"x" * 10, 90)])
def test_a_connection_lost_half_way_keeps_only_the_part(tmp_path, monkeypatch, error):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: BrokenResponse(error))
    remote = dl.Remote("https://example.org/retinamnist.npz", dl.RETINAMNIST[28].md5)
    with pytest.raises(DrgradeError, match="cannot download https://example.org/retinamnist.npz"
                                           ".*kept in .*retinamnist.npz.part: run this again "
                                           "to resume"):
        dl.fetch(remote, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["retinamnist.npz.part"]
    assert (tmp_path / "retinamnist.npz.part").read_bytes() == b"x" * 10


def test_a_full_disk_is_a_clear_error_and_nothing_has_the_final_name(local_npz, tmp_path,
                                                                     monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    remote = dl.Remote(local_npz.as_uri(), dl.RETINAMNIST[28].md5)
    with pytest.raises(DrgradeError, match=r"cannot write .*retinamnist.npz: No space left on "
                                           r"device \(\d+ MB free in .*\); the bytes so far are "
                                           r"kept in .*retinamnist.npz.part"):
        dl.fetch(remote, tmp_path, progress=False)
    assert not (tmp_path / "retinamnist.npz").exists()


@pytest.fixture
def range_server(local_npz):
    """A loopback HTTP server of the RetinaMNIST file that honours Range requests (or not,
    with `.ranges = False`); `.asked` lists each request's Range header."""
    data = local_npz.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked = self.headers.get("Range")
            server.asked.append(asked)
            start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
            if asked and server.ranges and start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            body = data[start:] if asked and server.ranges else data
            self.send_response(206 if asked and server.ranges else 200)
            if asked and server.ranges:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.asked, server.ranges, server.data = [], True, data
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.remote = dl.Remote(f"http://127.0.0.1:{server.server_port}/retinamnist.npz",
                              dl.RETINAMNIST[28].md5)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("ranges", [True, False])
def test_a_rerun_resumes_an_interrupted_download(range_server, tmp_path, ranges):
    range_server.ranges = ranges
    done = len(range_server.data) // 3
    (tmp_path / "retinamnist.npz.part").write_bytes(range_server.data[:done])
    path = dl.fetch(range_server.remote, tmp_path, progress=False)
    assert range_server.asked == [f"bytes={done}-"]
    # Resumed, or started over where the server sends only whole files: the same file.
    assert path.read_bytes() == range_server.data
    assert [p.name for p in tmp_path.iterdir()] == ["retinamnist.npz"]


def test_a_whole_part_left_by_a_kill_before_the_rename_is_verified(range_server, tmp_path):
    (tmp_path / "retinamnist.npz.part").write_bytes(range_server.data)
    path = dl.fetch(range_server.remote, tmp_path, progress=False)  # the server answers 416
    assert path.read_bytes() == range_server.data
    assert [p.name for p in tmp_path.iterdir()] == ["retinamnist.npz"]


def test_a_resumed_download_with_a_wrong_checksum_is_deleted(range_server, tmp_path):
    (tmp_path / "retinamnist.npz.part").write_bytes(b"not the start of the file")
    with pytest.raises(DrgradeError, match="is not the published .*the download was deleted"):
        dl.fetch(range_server.remote, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
