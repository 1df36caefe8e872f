"""`python -m sslpath.train`: train, test and record one run, or a chain (SSL pretraining, then fine-tuning).

The command only: Hydra parses the settings (`--help` shows them, from conf/hydra/default.yaml), and the
work is sslpath.training.fit's. Heavy libraries are imported inside main, so `--help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sslpath.core.errors import exit_on_user_error

PROG = "sslpath.train"


@hydra.main(version_base="1.3", config_path="pkg://sslpath.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the best value of `optimized_metric` (val/acc by default): the objective of sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sslpath.core.console import quiet_third_party
    from sslpath.training.fit import train
    from sslpath.training.rundir import removed_if_unstarted

    quiet_third_party()
    # A run that stops before training (bad data, offline, Ctrl-C) leaves no run dir to trip over.
    with removed_if_unstarted(Path(HydraConfig.get().runtime.output_dir)), exit_on_user_error(PROG):
        try:
            return train(cfg)["optimized_value"]
        except SIGTERMException:
            print(f"{PROG}: stopped by SIGTERM; a checkpoint was saved: resume with resume=RUN_DIR.", file=sys.stderr)
            raise SystemExit(143) from None


if __name__ == "__main__":
    main()
