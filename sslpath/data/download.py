"""Official MedMNIST files: what `medmnist.INFO` says of a flag, and a resumable, MD5-verified download.

A download streams into `.<name>.part` beside the target and becomes the target only once its MD5
matches; an interrupted one keeps its partial file and the next download resumes it with an HTTP
Range request. A lock file beside the target (`.<name>.lock`) makes processes that start together
(sweep jobs, the nodes of a DDP run on a shared disk) download it once: the others wait and reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from sslpath.core.errors import UserError
from sslpath.core.paths import make_writable_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# A forced download (data.download=true) reuses a file that another process fetched after this one started.
_STARTED = time.time()

# medmnist.INFO tasks sslpath trains: one label per image (ordinal grades train as classes). Multi-label is not.
SUPPORTED_TASKS = ("multi-class", "binary-class", "ordinal-regression")


def flag_info(flag: str) -> dict[str, Any]:
    """medmnist.INFO[flag] for a 2D single-label set; a clear error for anything else."""
    import medmnist

    info = medmnist.INFO.get(flag)
    if info is None:
        flags = sorted(f for f, i in medmnist.INFO.items() if i["task"] in SUPPORTED_TASKS and not f.endswith("3d"))
        raise UserError(f"unknown MedMNIST flag data.flag={flag}; choose one of {', '.join(flags)}.")
    if flag.endswith("3d"):
        raise UserError(
            f"data.flag={flag} is a 3D MedMNIST set (volumes); sslpath trains 2D tile classifiers. Use its 2D "
            f"counterpart (e.g. {flag.removesuffix('3d')}) or another 2D flag."
        )
    if info["task"] not in SUPPORTED_TASKS:
        raise UserError(
            f"data.flag={flag} is a {info['task']} task ({len(info['label'])} labels per image); sslpath trains "
            "single-label classifiers. Choose a multi-class or binary set such as pathmnist, bloodmnist or dermamnist."
        )
    return info


def class_names(flag: str) -> list[str]:
    labels = flag_info(flag)["label"]
    return [labels[str(i)] for i in range(len(labels))]


def official_filename(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def official_source(flag: str, size: int) -> tuple[str, str]:
    """URL and MD5 of the official MedMNIST file."""
    info = flag_info(flag)
    suffix = "" if size == 28 else f"_{size}"
    if f"url{suffix}" not in info:
        raise UserError(
            f"{flag} has no official file at data.size={size}; choose 28, 64, 128 or 224, or pass "
            "data.path=FILE (a custom file is resized to data.size)."
        )
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def check_download_setting(value: Any) -> None:
    """data.download: auto fetches a missing file, true fetches afresh, false never touches the network."""
    if not (value == "auto" or isinstance(value, bool)):
        raise UserError(
            f"data.download={value!r} is not valid: use auto (fetch the official file when it is missing), true "
            "(fetch it afresh) or false (never touch the network)."
        )


class DownloadError(UserError):
    """The network or the server let a download down; `kept` bytes of it wait for the next try to resume."""

    def __init__(self, url: str, dest: Path, err: Exception, timeout_s: float, kept: int) -> None:
        reason = err.reason if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError) else err
        self.timed_out = isinstance(reason, TimeoutError)
        self.cause = f"no answer within {timeout_s:g} s" if self.timed_out else str(reason) or type(reason).__name__
        self.kept = kept
        resume = f" {size_text(kept)} are kept in {partial_path(dest)}: the next try resumes from there." if kept else ""
        super().__init__(f"could not download {url} to {dest} ({self.cause}).{resume}")


def partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def download(url: str, md5: str, dest: Path, timeout_s: float = 15, force: bool = False) -> Path:
    """dest, fetched from url once: a process that finds another downloading it waits and reuses its file.

    `force` fetches afresh (no resume) unless another process did so since this one started.
    `timeout_s` bounds the wait for a connection and for each read, so an unreachable host fails fast.
    """
    make_writable_dir(dest.parent, "data folder", key="data.root (or the SSLPATH_DATA_DIR environment variable)")
    lock = FileLock(lock_path(dest))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is downloading %s: waiting for it", dest)
        lock.acquire()
    try:
        if dest.is_file() and (not force or dest.stat().st_mtime >= _STARTED):
            log.info("%s is there now (downloaded since this run started, %s)", dest, size_text(dest.stat().st_size))
            return dest
        log.info("downloading %s (CC BY 4.0) to %s", url, dest)
        fetch(url, md5, dest, timeout_s, resume=not force)
    finally:
        lock.release()
    log.info("downloaded %s (%s, MD5 verified) -> %s", dest.name, size_text(dest.stat().st_size), dest)
    return dest


def fetch(url: str, md5: str, dest: Path, timeout_s: float, resume: bool = True) -> None:
    """Resume (or start) the partial file, check its MD5, then rename it to dest: dest is whole or absent."""
    part = partial_path(dest)
    if not resume:
        part.unlink(missing_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    if start:
        log.info("resuming the download of %s after %s", dest.name, size_text(start))
    try:
        start = transfer(url, dest, start, timeout_s)
    # URLError and timeouts are OSErrors; HTTPException covers a connection cut mid-body, ValueError a malformed URL.
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(url, dest, err, timeout_s, part.stat().st_size if part.is_file() else 0) from None
    digest = file_md5(part)
    if digest == md5:
        os.replace(part, dest)
        return
    part.unlink()
    if start:  # the kept bytes may be of an older file at this URL: one fresh try
        log.warning("the resumed download of %s failed its MD5 check: downloading it afresh", dest.name)
        fetch(url, md5, dest, timeout_s, resume=False)
        return
    raise UserError(
        f"downloaded {url} but its MD5 is {digest}, expected {md5}; the file was discarded. Retry the download, "
        "or fetch the file by hand and check it with `md5sum`."
    )


def transfer(url: str, dest: Path, start: int, timeout_s: float) -> int:
    """Append the bytes after `start` to dest's partial file (all of them, truncating what was there,
    when the server ignores Range); returns where this transfer started."""
    part = partial_path(dest)
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing after `start`: the partial file may be whole; its MD5 decides
            err.close()
            return start
        raise
    with response:
        if start and not resumes_at(response, start):
            log.info("the server sent the whole file instead of the rest: downloading %s from the start", dest.name)
            start = 0
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        with part.open("r+b" if start else "wb") as out, progress_bar(dest.name, total, start) as advance:
            out.seek(start)
            out.truncate()
            while block := response.read1(CHUNK):  # what has arrived: a timeout loses nothing received
                out.write(block)
                advance(len(block))
            out.flush()
            os.fsync(out.fileno())
            if total is not None and out.tell() < total:  # http.client ends a cut body quietly
                raise ConnectionError(f"the connection closed after {size_text(out.tell())} of {size_text(total)}")
    return start


def resumes_at(response: Any, start: int) -> bool:
    """A 206 answer whose Content-Range starts where the partial file ends."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    return response.status == 206 and match is not None and int(match.group(1)) == start


@contextlib.contextmanager
def progress_bar(name: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    """Bytes, rate and time left on a terminal; nothing when stderr is a file or a pipe (logs, tests)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn(name), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(name, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def size_text(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
