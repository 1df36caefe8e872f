"""`python -m sslpath.evaluate ckpt=PATH …`: test a checkpoint on a data set, as its training run's test stage did.

The command only: Hydra parses the settings (`--help` shows them, from conf/evaluate.yaml), and the work is
sslpath.evaluation.evaluate's. Heavy libraries are imported inside main, so `--help` answers at once.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sslpath.core.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="pkg://sslpath.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from sslpath.evaluation.evaluate import PROG, evaluate

    with exit_on_user_error(PROG):
        evaluate(cfg)


if __name__ == "__main__":
    main()
