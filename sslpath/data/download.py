"""Official MedMNIST files: what `medmnist.INFO` says of a flag, and an MD5-verified download."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_output

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


def download(url: str, md5: str, dest: Path, timeout_s: float = 20) -> Path:
    """Stream to a temp file beside dest, check the MD5, then rename: dest is whole or absent."""
    digest = hashlib.md5()
    try:
        with atomic_output(dest, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while block := resp.read(1 << 20):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != md5:
                raise UserError(
                    f"downloaded {url} but its MD5 is {digest.hexdigest()}, expected {md5}; the file was "
                    "discarded. Retry the download, or fetch the file by hand and check it with `md5sum`."
                )
    # URLError and timeouts are OSErrors; HTTPException covers a connection cut mid-body, ValueError a malformed URL.
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise UserError(
            f"could not download {url} to {dest} ({err}). Without network access, copy the file to "
            f"{dest} by hand, or train on a local MedMNIST-format npz with data.path=FILE, or use "
            "data=synthetic for a dry run."
        ) from None
    return dest
