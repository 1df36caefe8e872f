"""The schema rows of a run's trainer, callbacks, loggers and hyperparameter sweeper (the classes their
configs instantiate), merged into sslpath.checks.schema.TARGETS."""

from __future__ import annotations

from sslpath.checks.rules import (
    BOOL,
    COUNT,
    FOLDER_NAME,
    MODE,
    MONITOR,
    NODE,
    NON_NEGATIVE,
    PATH,
    SEED,
    Either,
    OneOf,
    Params,
    Seq,
    Text,
    _sync_batchnorm,
    integer,
    num,
    opt,
)

CHECKPOINT_DIR = {"dirpath": PATH, "filename": Text(r"[^/\0]+", "a file name without '/'")}

TRAINING_TARGETS: dict[str, Params] = {
    # trainer, callbacks, loggers
    "lightning.pytorch.Trainer": Params(
        {
            "default_root_dir": PATH,
            "accelerator": Text(),
            "strategy": Either((Text(), NODE)),
            "devices": Either((integer(-1), Text(), Seq(integer(0), 1))),
            "num_nodes": COUNT,
            "precision": Either((Text(), integer(16, 64))),  # Lightning refuses unknown names when it builds the trainer
            "max_epochs": COUNT,
            "max_steps": integer(-1),
            "check_val_every_n_epoch": opt(COUNT),
            "val_check_interval": opt(Either((COUNT, num(0, 1, open_low=True)))),
            "log_every_n_steps": COUNT,
            "num_sanity_val_steps": integer(-1),
            # 0 trains nothing: a run would test (and record) an untrained model as if trained
            "limit_train_batches": opt(Either((integer(1), num(0, 1, open_low=True)))),
            "limit_val_batches": opt(Either((integer(0), num(0, 1)))),
            "limit_test_batches": opt(Either((integer(0), num(0, 1)))),
            "fast_dev_run": Either((BOOL, integer(0))),
            "accumulate_grad_batches": COUNT,
            "gradient_clip_val": opt(NON_NEGATIVE),
            "gradient_clip_algorithm": opt(OneOf(("norm", "value"))),
            "deterministic": opt(Either((BOOL, OneOf(("warn",))))),
            "benchmark": opt(BOOL),
            "sync_batchnorm": BOOL,
            "enable_model_summary": opt(BOOL),
            "enable_progress_bar": opt(BOOL),
            "enable_checkpointing": opt(BOOL),
            "plugins": opt(Seq(NODE)),
            "profiler": opt(Either((NODE, OneOf(("simple", "advanced", "pytorch"))))),
        },
        _sync_batchnorm,
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint": Params(
        {
            **CHECKPOINT_DIR,
            "monitor": MONITOR,  # and a metric the model logs: validate.check_metrics
            "mode": MODE,
            "save_top_k": integer(-1),
            "save_last": opt(Either((BOOL, OneOf(("link",))))),
            "auto_insert_metric_name": BOOL,
            "every_n_epochs": opt(integer(0)),
            "verbose": BOOL,
        }
    ),
    "lightning.pytorch.callbacks.EarlyStopping": Params(
        {
            "monitor": MONITOR,  # and a metric the model logs: validate.check_metrics
            "mode": MODE,
            "patience": integer(0),
            "min_delta": NON_NEGATIVE,
            "check_finite": BOOL,
            "stopping_threshold": opt(num()),
            "divergence_threshold": opt(num()),
            "verbose": BOOL,
            "strict": BOOL,
            "check_on_train_epoch_end": opt(BOOL),
        }
    ),
    "lightning.pytorch.callbacks.LearningRateMonitor": Params(
        {"logging_interval": opt(OneOf(("step", "epoch"))), "log_momentum": BOOL, "log_weight_decay": BOOL}
    ),
    "lightning.pytorch.callbacks.RichProgressBar": Params({"refresh_rate": integer(0), "leave": BOOL}),
    "lightning.pytorch.callbacks.TQDMProgressBar": Params({"refresh_rate": integer(0), "leave": BOOL}),
    "sslpath.training.callbacks.EpochLog": Params({}),
    "sslpath.training.callbacks.SlimBestCheckpoint": Params({}),
    "sslpath.training.callbacks.FiniteLoss": Params({}),
    "sslpath.training.callbacks.KeepLastCheckpoint": Params({"dirpath": PATH, "keep": BOOL}),
    "sslpath.training.callbacks.EmbeddingProjector": Params({"max_images": integer(0), "seed": SEED}),
    "sslpath.training.callbacks.EpochSeed": Params({"seed": SEED}),
    "sslpath.training.callbacks.InterruptCheckpoint": Params(CHECKPOINT_DIR),
    "sslpath.training.checkpoint_writer.AtomicCheckpointIO": Params({}),
    "lightning.pytorch.profilers.SimpleProfiler": Params({"dirpath": opt(PATH), "filename": opt(CHECKPOINT_DIR["filename"])}),
    "lightning.pytorch.loggers.TensorBoardLogger": Params(
        {"save_dir": PATH, "name": opt(Text()), "version": opt(Either((FOLDER_NAME, integer(0)))), "default_hp_metric": BOOL}
    ),
    "lightning.pytorch.loggers.CSVLogger": Params(
        {"save_dir": PATH, "name": opt(Text()), "version": opt(Either((FOLDER_NAME, integer(0))))}
    ),
    "lightning.pytorch.loggers.MLFlowLogger": Params(
        {
            "experiment_name": Text(),
            "run_name": opt(Text()),
            "tracking_uri": opt(Text()),
            "artifact_location": opt(PATH),
            "log_model": Either((BOOL, OneOf(("all",)))),
        }
    ),
    # hparams_search=optuna (hydra.sweeper.*: checked when the sweep starts, sslpath.training.hydra_callbacks)
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper": Params(
        {
            "n_trials": COUNT,  # 0 trials end in optuna's "No trials are completed yet"
            "n_jobs": COUNT,
            "direction": Either((OneOf(("minimize", "maximize")), Seq(OneOf(("minimize", "maximize")), 1))),
            "study_name": opt(Text()),
            "storage": opt(Text()),
            "max_failure_rate": num(0, 1),
            "sampler": NODE,
            "params": opt(NODE),
        }
    ),
    "optuna.samplers.TPESampler": Params({"seed": opt(SEED), "n_startup_trials": integer(0)}),
}
