"""Trust, third round (data side): no network and nothing in $HOME unless a setting asks; MLflow stores that
fail clearly; test tiles never in the unlabelled pool; the split a checkpoint trained on is recorded and kept;
stage keys and the folder cache follow the data's contents; a fast dev run never makes a chain's stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslpath.errors import UserError

from conftest import TINY, cli_env

# Variables that would hide what sslpath itself does: markers MLflow reads as "testing, no telemetry", and
# the settings this test process got when it imported sslpath.
HIDING = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY", "MPLCONFIGDIR")
HIDING += ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "DO_NOT_TRACK")

# Runs a module as `python -m` would, with every socket connection and name lookup refused and recorded.
GUARD = """
import runpy, socket, sys
log = sys.argv.pop(1)
def refuse(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{args[1:]!r}\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = socket.create_connection = refuse
sys.argv.pop(0)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_offline(tmp_path: Path, module: str, *args: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """`python -m module args` with $HOME an empty folder and no network; returns (result, home, net log)."""
    home, net = tmp_path / "home", tmp_path / "net.log"
    home.mkdir()
    env = {k: v for k, v in cli_env().items() if k not in HIDING} | {"HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", GUARD, str(net), module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    return result, home, net


def test_an_mlflow_run_opens_no_socket_and_writes_nothing_outside_its_paths(tmp_path):
    logs = tmp_path / "logs"
    result, home, net = run_offline(tmp_path, "sslpath.train", *TINY, "logger=mlflow", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not net.exists(), net.read_text()  # no telemetry, no name lookup
    assert list(home.iterdir()) == []  # no ~/.config/mlflow, no matplotlib cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "logs"]  # no ./mlruns
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{logs}/mlflow.db")
    experiment = client.get_experiment_by_name("sslpath")
    assert experiment.artifact_location == (logs / "mlflow-artifacts").as_uri().removeprefix("file://")
    assert len(client.search_runs(experiment.experiment_id)) == 1


def test_a_damaged_mlflow_store_is_a_clear_error_before_training(tmp_path):
    from omegaconf import OmegaConf

    from sslpath.tracking import open_mlflow

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 8)  # a header, then garbage
    node = OmegaConf.create(
        {"_target_": "lightning.pytorch.loggers.MLFlowLogger", "experiment_name": "sslpath", "tracking_uri": f"sqlite:///{db}"}
    )
    with pytest.raises(UserError, match=rf"could not open the MLflow store {db} .*Move it away.*tracking_uri=sqlite:///"):
        open_mlflow(node)


def test_keep_local_turns_telemetry_off_and_moves_matplotlibs_cache_out_of_home(monkeypatch):
    from sslpath.environment import keep_local

    for name in HIDING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")  # a user's own setting is kept
    keep_local()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"
    folder = Path(os.environ["MPLCONFIGDIR"])
    assert folder.is_dir() and not folder.is_relative_to(Path.home()) and folder.stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_two_runs_creating_one_mlflow_store_at_once_both_work(tmp_path):
    """Without the lock, MLflow's schema migration races and one process fails (alembic CommandError)."""
    code = (
        "import sys; from omegaconf import OmegaConf; from sslpath.tracking import open_mlflow; "
        "open_mlflow(OmegaConf.create({'_target_': 'lightning.pytorch.loggers.MLFlowLogger', 'experiment_name': 'sslpath', "
        f"'run_name': sys.argv[1], 'tracking_uri': 'sqlite:///{tmp_path}/logs/mlflow.db'}}))"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", code, f"run{i}"], env=cli_env(), stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/logs/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("sslpath").experiment_id)
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]
