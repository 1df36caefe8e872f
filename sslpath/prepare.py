"""`python -m sslpath.prepare --out SHARDS (--folder DIR | --npz FILE | --files LIST)`: write tile shards once,
for `data=stream data.dir=SHARDS` (pools larger than memory; docs/scale.md).

The command only: argparse and error handling; the work is sslpath.data.prepare_shards'. Heavy libraries are
imported after the arguments are parsed, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from sslpath.core.errors import exit_on_user_error
from sslpath.data.images import MAX_PIXELS

PROG = "sslpath.prepare"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write tiles as shards for data=stream: raw uint8 tiles and int64 labels on plain files with a "
        "checked JSON index (nothing pickled). Sources: a folder (class subfolders, train/ val/ test/ of them, or "
        "image files = an unlabelled pool), a MedMNIST-format npz, or a text list of image paths (an unlabelled pool).",
    )
    parser.add_argument("--out", type=Path, required=True, help="the new shard dir (must not exist)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="a folder of tiles")
    source.add_argument("--npz", type=Path, help="a MedMNIST-format npz (its unlabeled_images join train, unlabelled)")
    source.add_argument("--files", type=Path, help="a text file, one image path a line (relative to its folder)")
    parser.add_argument("--eval-npz", type=Path, help="val and test splits from this npz (for an unlabelled pool)")
    parser.add_argument("--size", type=int, default=28, help="tiles are resized to size x size (default 28)")
    parser.add_argument("--tiles-per-shard", type=int, default=10_000, help="tiles per shard file (default 10000)")
    parser.add_argument("--num-classes", type=int, help="class count of npz labels (default: largest label + 1)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"larger images are skipped (default {MAX_PIXELS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error(PROG):
        from sslpath.data.prepare_shards import prepare

        done = prepare(
            args.out, args.size, args.tiles_per_shard, folder=args.folder, npz=args.npz, files=args.files,
            eval_npz=args.eval_npz, num_classes=args.num_classes, max_pixels=args.max_pixels,
        )  # fmt: skip
    counts = ", ".join(f"{name} {split['count']} ({split['labelled']} labelled)" for name, split in done["splits"].items())
    skipped = done["source"].get("skipped_count", 0)
    print(f"{PROG}: {counts}; {skipped} unreadable file(s) skipped -> {done['out']}")


if __name__ == "__main__":
    main()
