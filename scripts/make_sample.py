"""Cut a small, stratified, seeded sample out of any MedMNIST-format npz, for tests and offline runs.

Two kinds of cut:

* per split (default): each output split is a stratified subset of the same-named source split,
  so the official train/val/test separation is kept:
      python scripts/make_sample.py pathmnist.npz small.npz --counts 701,100,199 --seed 0
* from one split (`--from-split`): all three output splits are cut, disjoint, from that split.
  Our shared ../shared/data/pathmnist_sample.npz was made this way, from the first 1,000 images
  of the official train split, re-split 701/100/199 (stratified, fixed seed):
      python scripts/make_sample.py pathmnist.npz sample.npz --from-split train --first 1000 --counts 701,100,199

`--first N` limits every source split to its first N images. The source is read like any data
file (headers checked first, nothing unpickled); the output holds the usual six members, with
images and labels as stored, plus `{split}_source_index` (each image's index in its source split),
and is written atomically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from sslpath.core.errors import UserError, exit_on_user_error
from sslpath.core.files import atomic_output
from sslpath.data.npz import read_arrays
from sslpath.data.splits import SPLITS, stratified_order


def positive_ints(text: str, n: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {n} positive whole number(s), comma-separated")
    return values


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative whole number, e.g. 0")
    return value


def same_file(a: Path, b: Path) -> bool:
    """Whether writing `b` would replace `a`: the same path once symlinks are resolved, or a hard link."""
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a symlink loop: no file to destroy, and writing there fails with its own message
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="MedMNIST-format npz to cut from")
    parser.add_argument("output", type=Path, help="npz to write")
    parser.add_argument(
        "--counts",
        type=lambda t: positive_ints(t, 3),
        required=True,
        metavar="TRAIN,VAL,TEST",
        help="images per output split, e.g. 701,100,199",
    )
    parser.add_argument("--from-split", choices=SPLITS, help="cut all three output splits from this source split")
    parser.add_argument(
        "--first",
        type=lambda t: positive_ints(t, 1)[0],
        metavar="N",
        help="draw only from the first N images of each source split",
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the stratified draw (default 0)")
    return parser.parse_args(argv)


def cut(
    arrays: dict[str, np.ndarray], counts: tuple[int, ...], from_split: str | None, first: int | None, seed: int
) -> dict[str, np.ndarray]:
    """The sample's members: per output split its images, labels and source indices."""
    picks: dict[str, tuple[str, np.ndarray]] = {}  # output split -> (source split, indices in it)
    sources = [from_split] if from_split else list(SPLITS)
    for source in sources:
        labels = arrays[f"{source}_labels"].reshape(-1)[:first]
        if labels.min() < 0:
            raise UserError(
                f"{source}_labels holds negative values ({labels.min()}); class indices start at 0. Fix the source file."
            )
        wanted = counts if from_split else (counts[SPLITS.index(source)],)
        if sum(wanted) > len(labels):
            raise UserError(
                f"--counts asks for {sum(wanted)} images from the {source} split, which offers {len(labels)}"
                f"{' (--first)' if first is not None else ''}; lower --counts"
                f"{' or raise --first' if first is not None else ' or cut from a larger file'}."
            )
        order = stratified_order(labels, seed)
        bounds = np.cumsum((0, *wanted))
        for out, lo, hi in zip(SPLITS if from_split else [source], bounds, bounds[1:]):
            picks[out] = (source, np.sort(order[lo:hi]))
    members = {}
    for out, (source, idx) in picks.items():
        members[f"{out}_images"] = arrays[f"{source}_images"][idx]
        members[f"{out}_labels"] = arrays[f"{source}_labels"][idx]
        members[f"{out}_source_index"] = idx.astype(np.int64)
    return members


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error("make_sample"):
        args = parse_args(argv)
        if not args.source.is_file():
            raise UserError(f"{args.source} not found; give the path of a MedMNIST-format npz, e.g. ~/.medmnist/pathmnist.npz.")
        if same_file(args.source, args.output):
            raise UserError(
                f"the output {args.output} is the source file {args.source}; writing the sample there would destroy "
                "the source. Give another output path, e.g. sample.npz."
            )
        members = cut(read_arrays(args.source), args.counts, args.from_split, args.first, args.seed)
        with atomic_output(args.output) as f:
            np.savez_compressed(f, **members)
        for split in SPLITS:
            labels = members[f"{split}_labels"].reshape(-1)
            print(f"{split}: {len(labels)} images, per class {np.bincount(labels).tolist()}")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
