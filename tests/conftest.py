"""Shared test fixtures: tiny synthetic runs composed from the real configs."""

from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Small enough for 2 CPU cores: 16 px synthetic tiles, a handful of batches, one epoch, and a
# few-thousand-parameter CNN. Real-size ResNet-18 runs live in the `slow` tier.
TINY_DATA = [
    "data=synthetic",
    "data.size=16",
    "data.train_count=72",
    "data.val_count=36",
    "data.test_count=36",
    "data.batch_size=24",
]
TINY_TRAINER = [
    "model.backbone.name=tiny",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
]
TINY = TINY_DATA + TINY_TRAINER

SAMPLE = os.environ.get("SSLPATH_SAMPLE_NPZ")

# No test reaches the internet: urllib and requests (here and in CLI subprocesses) go through a proxy
# on a closed local port, so a download the test did not point at its own server fails at once.
os.environ.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="127.0.0.1,localhost")


def compose_cfg(out_dir: Path, overrides: list[str] = (), tiny: bool = True) -> DictConfig:
    """Compose conf/train.yaml as `python -m sslpath.train` would, with its run dir at out_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        base = [*(TINY if tiny else []), f"paths.log_dir={out_dir}/logs"]
        cfg = compose("train", overrides=[*base, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: unbuffered, with tests/helpers.py importable for `+callbacks`."""
    tests = str(Path(__file__).parent)
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, module: str = "sslpath.train", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def run_main(module: str, *args: str) -> object:
    """`python -m module args` in this process: the command's main() with sys.argv set, as its console
    script runs it (a SystemExit propagates as the command raises it). Commands are found by name: no test
    imports an entry module as a library."""
    old_argv = sys.argv
    sys.argv = [module, *args]
    try:
        return importlib.import_module(module).main()
    finally:
        sys.argv = old_argv


@pytest.fixture
def sample_npz() -> Path:
    if not SAMPLE or not Path(SAMPLE).is_file():
        pytest.skip("set SSLPATH_SAMPLE_NPZ to ../shared/data/pathmnist_sample.npz to run real-data tests")
    return Path(SAMPLE)


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
