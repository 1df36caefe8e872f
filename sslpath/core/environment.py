"""What the libraries sslpath loads may do on their own: no network, no files outside the named places.

Set once, when `sslpath` is imported and before torchmetrics, MLflow or Hugging Face are: MLflow 3 sends
usage telemetry from `import mlflow` and writes an installation id to ~/.config/mlflow, Hugging Face's hub
reports downloads, and matplotlib (which torchmetrics imports) writes its font cache and config dir into
$HOME. A variable the user has set is left as it is: setting it is asking for that behaviour.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# The switches each library documents; "true"/"1" as each one reads them.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_DISABLE_TELEMETRY": "1"}
# An unreachable MLflow server: MLflow retries 7 times with exponential back-off (over 4 minutes before the
# error). Two retries and a 20 s timeout say "unreachable" within a minute; a user's own values win.
MLFLOW_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def keep_local() -> None:
    """Telemetry off, MLflow's patience with a server bounded, and matplotlib's cache in a private temporary
    folder removed at exit."""
    for name, value in {**NO_TELEMETRY, **MLFLOW_PATIENCE}.items():
        os.environ.setdefault(name, value)
    if "MPLCONFIGDIR" not in os.environ:
        # mkdtemp: 0700 and unpredictable. Child processes (DDP workers) inherit it and end before this one.
        folder = tempfile.mkdtemp(prefix="sslpath-matplotlib-")
        os.environ["MPLCONFIGDIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
