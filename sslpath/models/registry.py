"""The model kinds sslpath knows, read from the model classes themselves.

Each concrete model class declares its `kind`, whether it is `ssl` and its report `colour`; defining the
class registers it (`ImageModel.__init_subclass__`). This module imports the built-in methods, so their
kinds are always known; a class defined elsewhere (a test's toy method, a user's plug-in imported by its
config's `_target_`) joins when its module is imported. Checkpoint metadata checks, config checks,
reports and tests all read the kinds here: adding a method is one class, one YAML, one docs row.
"""

from __future__ import annotations

import sslpath.models.momentum_methods  # noqa: F401 (registers BYOL, MoCo v3, DINO)
import sslpath.models.ssl  # noqa: F401 (registers SimCLR, Barlow Twins, VICReg)
import sslpath.models.supervised  # noqa: F401 (registers the supervised models)
from sslpath.models.base import MODEL_CLASSES, ImageModel


def kinds() -> tuple[str, ...]:
    """Every registered kind, supervised first, then SSL, each in definition order."""
    return (*supervised_kinds(), *ssl_kinds())


def ssl_kinds() -> tuple[str, ...]:
    return tuple(kind for kind, cls in MODEL_CLASSES.items() if cls.ssl)


def supervised_kinds() -> tuple[str, ...]:
    return tuple(kind for kind, cls in MODEL_CLASSES.items() if not cls.ssl)


def class_of(kind: object) -> type[ImageModel] | None:
    """The class of a kind; None for anything else (also a value read from a file that is no text)."""
    return MODEL_CLASSES.get(kind) if isinstance(kind, str) else None


def is_ssl(kind: object) -> bool:
    cls = class_of(kind)
    return cls is not None and cls.ssl


def colour(kind: object) -> str | None:
    """The kind's declared report colour; None for an unknown kind or one that declares none."""
    cls = class_of(kind)
    return None if cls is None else cls.colour
