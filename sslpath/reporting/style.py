"""How reports look: one colour per model kind (declared by its class), line styles, percentages and short
class names."""

from __future__ import annotations

import re
import textwrap
import zlib
from collections import Counter
from collections.abc import Sequence

from sslpath.models import registry

# Kinds that declare no colour (sslpath.models.registry) get one of these, by a hash of the kind: the same
# every time. With the kinds' own, Paul Tol's "muted" scheme and Okabe-Ito's: colour-blind safe.
FALLBACK_COLOURS = ("#999933", "#E69F00", "#56B4E9", "#D55E00", "#0072B2", "#009E73")
LINESTYLES = ("-", "--", ":", "-.")  # lines of one kind (other names or label fractions) differ in dash and marker
MARKERS = ("o", "s", "^", "D", "v")
# The abbreviations of Kather et al. (2019), whose NCT-CRC-HE-100K tiles PathMNIST is made of.
PATHMNIST_ABBREVIATIONS = {
    "adipose": "ADI",
    "background": "BACK",
    "debris": "DEB",
    "lymphocytes": "LYM",
    "mucus": "MUC",
    "smooth muscle": "MUS",
    "normal colon mucosa": "NORM",
    "cancer-associated stroma": "STR",
    "colorectal adenocarcinoma epithelium": "TUM",
}
SHORT_NAME = 10  # longest class name shown as is in ticks and grid titles


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def kind_colour(kind: str) -> str:
    """The colour the kind's model class declares; otherwise one chosen by a hash of its name, the same every time."""
    kind = kind.lower()
    return registry.colour(kind) or FALLBACK_COLOURS[zlib.crc32(kind.encode()) % len(FALLBACK_COLOURS)]


def line_styles(kinds: Sequence[str]) -> list[dict[str, str]]:
    """Plot styles for lines of these kinds: the kind's colour; lines sharing a kind get other dashes and markers."""
    seen: Counter[str] = Counter()
    styles = []
    for kind in kinds:
        i = seen[kind]
        seen[kind] += 1
        dash, marker = LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
        styles.append({"color": kind_colour(kind), "linestyle": dash, "marker": marker})
    return styles


def short_class_names(names: Sequence[str]) -> list[str]:
    """Labels that fit a matrix cell or a grid title: PathMNIST's abbreviations, else names of up to
    SHORT_NAME characters as they are, else each name's first word, else the class index."""
    if all(name in PATHMNIST_ABBREVIATIONS for name in names):
        return [PATHMNIST_ABBREVIATIONS[name] for name in names]
    first_words = [re.split(r"[\s_-]+", name.strip())[0] for name in names]
    for candidate in (list(names), first_words):
        if all(0 < len(short) <= SHORT_NAME for short in candidate) and len(set(candidate)) == len(names):
            return candidate
    return [str(i) for i in range(len(names))]


def class_legend(names: Sequence[str]) -> str:
    """'ADI = adipose; BACK = background; …' for the short names that differ; '' when none does."""
    pairs = [f"{short} = {name}" for short, name in zip(short_class_names(names), names) if short != name]
    # no-break spaces keep each pair on one line when the legend wraps
    return textwrap.fill("; ".join(pair.replace(" ", "\u00a0") for pair in pairs), 100)
