"""Shared fixtures (the plain helpers they use live in factories.py)."""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from pathlib import Path

import pytest

# One intra-op thread per test process (and the command processes it starts): the tests' models are tiny,
# where a second thread costs more in synchronisation than it gives, and on a shared 2-core machine
# threads that spin-wait for each other slow everything down. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# torch, Lightning and sslpath are imported by the fixtures that need them, not here: under pytest-xdist the
# controller process, which runs no test, loads this file too, and would spend ~9 s importing them.

# No test reaches the internet: urllib and requests (here and in CLI subprocesses) go through a proxy
# on a closed local port, so a download the test did not point at its own server fails at once.
os.environ.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1,localhost")


@pytest.fixture(scope="session", autouse=True)
def cached_compositions() -> None:
    """Hydra compositions in this test process go through factories.cached_load_configuration."""
    from factories import cache_compositions

    cache_compositions()


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> dict:
    """One finished tiny baseline run (3 epochs, synthetic data saved as an npz) for every test that
    only reads a trained checkpoint and its files; tests write their outputs elsewhere."""
    from factories import read_csv, tiny_run

    run = tiny_run(tmp_path_factory.mktemp("tiny_run"))
    run["test_predictions"] = read_csv(run["dir"] / "test_predictions.csv")
    assert len({row["pred"] for row in run["test_predictions"]}) > 3, "the tiny model must tell classes apart"
    return run


@pytest.fixture(scope="session")
def timm_weights(tmp_path_factory) -> Path:
    """timm's tiny test ResNet with its own random weights, saved as safetensors: a public encoder's file."""
    import safetensors.torch as st
    import torch

    from sslpath.models.backbones import build

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "encoder.safetensors"
    st.save_file(build("timm/test_resnet", stem="imagenet").state_dict(), path)
    return path


@pytest.fixture
def sample_npz() -> Path:
    sample = os.environ.get("SSLPATH_SAMPLE_NPZ")
    if not sample or not Path(sample).is_file():
        pytest.skip("set SSLPATH_SAMPLE_NPZ to ../shared/data/pathmnist_sample.npz to run real-data tests")
    return Path(sample)


class FileServer(http.server.ThreadingHTTPServer):
    """The files under `root` over HTTP on 127.0.0.1, with Range requests (206, 416) and the faults a
    test switches on: `status` answers every request with that error, `cut_after` closes the connection
    after that many body bytes (once), `ignore_range` answers ranged requests with the whole file,
    `pause_at`/`pause_s` stall the body after that many bytes. `requests` records each request's headers."""

    daemon_threads = True  # a stalled handler never holds up shutdown

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.root, self.requests = root, []
        self.status: int | None = None
        self.cut_after: int | None = None
        self.ignore_range = False
        self.pause_at, self.pause_s = 0, 0.0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers))
        path = srv.root / self.path.lstrip("/").split("?")[0]
        if srv.status is not None or not path.is_file():
            self.send_error(srv.status or 404)
            return
        data = path.read_bytes()
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(ranged[1]) if ranged and not srv.ignore_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cut_after is not None:
            body, srv.cut_after, self.close_connection = body[: srv.cut_after], None, True
        try:
            self.wfile.write(body[: srv.pause_at])
            self.wfile.flush()
            time.sleep(srv.pause_s)
            self.wfile.write(body[srv.pause_at :])
        except ConnectionError:  # the client gave up (its timeout): nothing left to serve
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    """A FileServer over tmp_path/www, stopped when the test ends."""
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
