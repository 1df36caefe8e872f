"""`python -m sslpath.evaluate ckpt=PATH …`: test a checkpoint on a data set, as its training run's test stage did;
with protocol=knn|linear|fewshot, fit frozen-feature heads on its (or a public encoder's) features.

The command only: Hydra parses the settings (`--help` shows them, from conf/evaluate.yaml), and the work is
sslpath.evaluation's. Heavy libraries are imported inside main, so `--help` answers at once.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sslpath.core.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="pkg://sslpath.conf", config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    from sslpath.evaluation import protocols

    with exit_on_user_error(protocols.PROG):
        protocols.run(cfg)


def main() -> None:
    """The console script and `python -m`. `encoder=timm/<name>` names a timm architecture, not a config
    file: it is shorthand for encoder.name=timm/<name>, so encoder.weights=… can sit beside it."""
    sys.argv = [f"encoder.name={a.split('=', 1)[1]}" if a.startswith("encoder=") else a for a in sys.argv]
    _main()


if __name__ == "__main__":
    main()
