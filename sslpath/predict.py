"""`python -m sslpath.predict ckpt=PATH input=FILE_OR_DIR …`: classify new images with a checkpoint.

The command only: Hydra parses the settings (`--help` shows them, from conf/predict.yaml), and the work is
sslpath.evaluation.predict's. Heavy libraries are imported inside the functions, so `--help` answers at once.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslpath.core.errors import exit_on_user_error

PROG = "sslpath.predict"


@hydra.main(version_base="1.3", config_path="pkg://sslpath.conf", config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    from sslpath.evaluation.predict import predict

    with exit_on_user_error(PROG):
        predict(cfg)


def main() -> None:
    """`foo=1` names no setting: refused with the tool's own message before Hydra, which would exit 1."""
    overrides = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    if overrides:  # `--help` alone imports nothing heavy
        from sslpath.evaluation.predict import refuse_unknown_overrides

        with exit_on_user_error(PROG):
            refuse_unknown_overrides(overrides)
    _hydra_main()


if __name__ == "__main__":
    main()
