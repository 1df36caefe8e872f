"""data.download: once per machine, resumable, MD5-verified, quick to fail offline; tested against
tests/conftest.py's FileServer on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time

import pytest
from filelock import FileLock

from sslpath.checks.validate import validate
from sslpath.core.errors import UserError
from sslpath.data import download as dl
from sslpath.data.datamodule import MedMNISTDataModule

from factories import SMALL, closed_port, compose_cfg, write_npz

CUT = 3000  # bytes the server sends before it drops an interrupted transfer


@pytest.fixture
def served(file_server):
    """A 28 px PathMNIST-format npz on the server: (its bytes, its MD5, its URL)."""
    source = write_npz(file_server.root / "pathmnist.npz", num_classes=9, size=28)
    data = source.read_bytes()
    assert len(data) > 2 * CUT
    return data, hashlib.md5(data).hexdigest(), file_server.url("pathmnist.npz")


def module(tmp_path, url, md5, download="auto", **kwargs) -> MedMNISTDataModule:
    return MedMNISTDataModule(root=str(tmp_path / "data"), download=download, url=url, md5=md5, num_classes=9, **SMALL, **kwargs)


def test_auto_downloads_a_missing_file_once_and_then_never_again(tmp_path, file_server, served, caplog):
    data, md5, url = served
    dm = module(tmp_path, url, md5)
    caplog.set_level("INFO")
    dm.prepare_data()
    assert dm.file.read_bytes() == data and len(file_server.requests) == 1
    assert f"downloaded pathmnist.npz ({dl.size_text(len(data))}, MD5 verified) -> {dm.file}" in caplog.text
    assert "Range" not in file_server.requests[0]
    dm.prepare_data()
    module(tmp_path, url, md5).setup("fit")
    assert len(file_server.requests) == 1  # the file is there: no second request
    assert not dl.partial_path(dm.file).exists()


def test_interrupted_download_resumes_with_a_range_request(tmp_path, file_server, served):
    data, md5, url = served
    file_server.cut_after = CUT
    dm = module(tmp_path, url, md5)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    text = str(err.value)
    assert "tried to download it from" in text and "3.0 kB are kept beside it and the next run resumes" in text
    part = dl.partial_path(dm.file)
    assert part.read_bytes() == data[:CUT] and not dm.file.exists()

    dm.prepare_data()
    assert file_server.requests[1]["Range"] == f"bytes={CUT}-"
    assert dm.file.read_bytes() == data and not part.exists()


def test_ctrl_c_mid_download_keeps_what_arrived_for_the_next_run(tmp_path, file_server, served, monkeypatch):
    data, md5, url = served
    file_server.pause_at, file_server.pause_s = CUT, 0.2

    @contextlib.contextmanager
    def interrupted_bar(name, total, done):
        def advance(n):
            raise KeyboardInterrupt

        yield advance

    dest = tmp_path / "pathmnist.npz"
    with monkeypatch.context() as patch:
        patch.setattr(dl, "progress_bar", interrupted_bar)
        with pytest.raises(KeyboardInterrupt):
            dl.download(url, md5, dest)
    kept = dl.partial_path(dest).read_bytes()
    assert 0 < len(kept) <= CUT and data.startswith(kept) and not dest.exists()
    file_server.pause_s = 0
    dl.download(url, md5, dest)
    assert file_server.requests[1]["Range"] == f"bytes={len(kept)}-" and dest.read_bytes() == data


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path, file_server, served):
    data, md5, url = served
    dest = tmp_path / "data" / "pathmnist.npz"
    dest.parent.mkdir()
    dl.partial_path(dest).write_bytes(data[:CUT])
    file_server.ignore_range = True
    dl.download(url, md5, dest)
    assert file_server.requests[0]["Range"] == f"bytes={CUT}-"  # asked to resume, got the whole file
    assert dest.read_bytes() == data and not dl.partial_path(dest).exists()


def test_a_partial_file_that_is_already_whole_is_checked_and_kept(tmp_path, file_server, served):
    data, md5, url = served
    dest = tmp_path / "pathmnist.npz"
    dl.partial_path(dest).write_bytes(data)  # killed between the last byte and the rename
    dl.download(url, md5, dest)  # the server answers 416: nothing after the end
    assert file_server.requests[0]["Range"] == f"bytes={len(data)}-" and dest.read_bytes() == data


def test_a_stale_partial_file_fails_its_md5_and_downloads_afresh_once(tmp_path, file_server, served):
    data, md5, url = served
    dest = tmp_path / "pathmnist.npz"
    dl.partial_path(dest).write_bytes(b"x" * CUT)  # bytes of another file once at this URL
    dl.download(url, md5, dest)
    assert [r.get("Range") for r in file_server.requests] == [f"bytes={CUT}-", None]
    assert dest.read_bytes() == data


def test_wrong_md5_discards_the_file(tmp_path, file_server, served):
    data, _, url = served
    dm = module(tmp_path, url, "0" * 32)
    with pytest.raises(UserError, match=f"its MD5 is {hashlib.md5(data).hexdigest()}, expected 0{{32}}; the file was discarded"):
        dm.prepare_data()
    assert not dm.file.exists() and not dl.partial_path(dm.file).exists()


@pytest.mark.parametrize("fault", ["404", "500", "refused", "not a url"])
def test_failures_name_the_cause_and_keep_nothing(tmp_path, file_server, served, fault):
    _, md5, url = served
    url = {
        "404": file_server.url("absent.npz"),
        "refused": f"http://127.0.0.1:{closed_port()}/pathmnist.npz",
        "not a url": "not a url",
    }.get(fault, url)
    file_server.status = 500 if fault == "500" else None
    cause = {
        "404": "HTTP Error 404: Not Found",
        "500": "HTTP Error 500: Internal Server Error",
        "refused": "Connection refused",
        "not a url": "unknown url type",
    }[fault]
    dm = module(tmp_path, url, md5)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    text = str(err.value)
    assert f"pathmnist not found at {dm.file}; sslpath tried to download it from {url} and could not" in text
    assert cause in text and "the next run tries again" in text and "data.path=FILE" in text and "\n" not in text
    assert not dm.file.exists() and not dl.partial_path(dm.file).exists()


def test_a_stalled_server_times_out_and_the_partial_file_is_kept(tmp_path, file_server, served):
    data, md5, url = served
    file_server.pause_at, file_server.pause_s = CUT, 5.0
    dm = module(tmp_path, url, md5, download_timeout_s=0.2)
    with pytest.raises(UserError, match=r"no answer within 0.2 s: data.download_timeout_s sets the wait\), so 3.0 kB are kept"):
        dm.prepare_data()
    assert dl.partial_path(dm.file).read_bytes() == data[:CUT]
    file_server.pause_s = 0
    dm.prepare_data()
    assert file_server.requests[-1]["Range"] == f"bytes={CUT}-" and dm.file.read_bytes() == data


def test_a_slow_server_within_the_timeout_is_fine(tmp_path, file_server, served):
    data, md5, url = served
    file_server.pause_at, file_server.pause_s = CUT, 0.3
    dm = module(tmp_path, url, md5, download_timeout_s=10)
    dm.prepare_data()
    assert dm.file.read_bytes() == data and len(file_server.requests) == 1


def test_download_false_never_connects(tmp_path, file_server, served):
    _, md5, url = served
    dm = module(tmp_path, url, md5, download=False)
    with pytest.raises(UserError, match="data.download=false forbids fetching it"):
        dm.setup("fit")
    assert file_server.requests == [] and not (tmp_path / "data").exists()


def test_download_true_fetches_afresh_once_per_process(tmp_path, file_server, served):
    data, md5, url = served
    dm = module(tmp_path, url, md5, download=True)
    dm.file.parent.mkdir()
    dm.file.write_bytes(b"an older copy")
    os.utime(dm.file, (0, 0))  # written long before this process started
    dl.partial_path(dm.file).write_bytes(data[:CUT])  # never resumed by a forced download
    dm.prepare_data()
    assert dm.file.read_bytes() == data and [r.get("Range") for r in file_server.requests] == [None]
    dm.prepare_data()  # a chain's second stage: the file is fresh already
    assert len(file_server.requests) == 1


def test_a_second_process_waits_for_the_first_and_reuses_its_file(tmp_path, file_server, served, caplog):
    """Sweep jobs that start together: one downloads under the lock, the others wait, then find the file."""
    data, md5, url = served
    dest = tmp_path / "pathmnist.npz"
    caplog.set_level("INFO")
    first = FileLock(dl.lock_path(dest))
    first.acquire()  # the first job, mid-download
    waiter = threading.Thread(target=dl.download, args=(url, md5, dest))
    waiter.start()
    deadline = time.monotonic() + 60
    while "another process is downloading" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "another process is downloading" in caplog.text
    dest.write_bytes(data)  # the first job's download lands
    first.release()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and file_server.requests == [] and dest.read_bytes() == data


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, file_server, served, capsys):
    _, md5, url = served
    dl.download(url, md5, tmp_path / "pathmnist.npz")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.download=maybe", "data.download='maybe' is not valid: it must be true or false or auto"),
        ("data.download=1", "data.download=1 is not valid"),
        ("data.download_timeout_s=0", "data.download_timeout_s=0 is not valid: it must be a number > 0"),
        ("data.download_timeout_s=abc", "data.download_timeout_s='abc' is not valid"),
    ],
)
def test_download_settings_are_validated(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, ["data=pathmnist", override], tiny=False)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        validate(cfg)
