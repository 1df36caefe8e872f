"""The schema of every user-set value: its type and allowed range, in one place.

Values are found two ways. `PATHS` holds settings that no class receives (seed, paths, resume…), by
config path. `TARGETS` holds the parameters of each class (or function) a config node instantiates
with `_target_`, by the class's import path: a row applies wherever a node of that class, or of a
subclass, appears, so a method's rows cover `model=byol` and `model@pretrain=byol` alike, and a
kornia op's rows cover it in any augmentation pipeline. When a class gains a parameter, add a row
to its `Params`; tests/test_validate_schema.py fails for a shipped setting without one.
The rules themselves: sslpath.checks.rules.
"""

from __future__ import annotations

from sslpath.checks.rules import (
    BOOL,
    CLASSES,
    COUNT,
    EMA,
    LR,
    MONITOR,
    NODE,
    NON_NEGATIVE,
    PATH,
    POSITIVE,
    PROB,
    SEED,
    SIZE,
    SPLIT_SHARE,
    TEMPERATURE,
    TEXT,
    WIDTH,
    Either,
    OneOf,
    Params,
    Rule,
    Seq,
    Text,
    _momentum_order,
    _nesterov,
    _stain_reference,
    _synthetic_memory,
    integer,
    num,
    opt,
    pair,
)
from sslpath.checks.schema_training import TRAINING_TARGETS
from sslpath.data.stain import OD_SCALE
from sslpath.data.stain_norm import METHODS as STAIN_METHODS
from sslpath.models.checkpoint import MAX_ABS_MEAN, MAX_STD, MIN_STD
from sslpath.results.record import BUDGETS, SELECTIONS
from sslpath.results.stats import LEVEL_RANGE, RESAMPLES_RANGE, SEED_RANGE

DATA = {
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "label_fraction": SPLIT_SHARE,
    "on_device": Either((BOOL, OneOf(("auto",)))),
    "seed": SEED,
    # per RGB channel, in the ranges a checkpoint may carry: a smaller std or a larger mean blows inputs up to inf
    "mean": Seq(num(-MAX_ABS_MEAN, MAX_ABS_MEAN), 3, 3),
    "std": Seq(num(MIN_STD, MAX_STD), 3, 3),
    "channels_last": BOOL,
    "num_classes": CLASSES,
    "stain_norm": OneOf(STAIN_METHODS),
    "stain_reference": opt(PATH),
    "stain_min_tissue": PROB,
    "node_cache": Either((BOOL, OneOf(("auto",)))),
    "node_cache_dir": PATH,
}
SSL_VIEWS = {"input.views": integer(2, 2)}  # the two views of the paper's loss
HEAD = {"projector_hidden_dim": WIDTH, "projector_dim": WIDTH}
KORNIA_OP = {"p": PROB, "same_on_batch": BOOL, "keepdim": BOOL}
RESAMPLE = Either((Text(r"[A-Za-z_]+", "a resampling name (nearest, bilinear, bicubic)"), integer(0, 5)))


TARGETS: dict[str, Params] = {
    # data
    "sslpath.data.datamodule.ArrayDataModule": Params(DATA, _stain_reference),
    "sslpath.data.datamodule.MedMNISTDataModule": Params(
        {
            "flag": Text(r"[a-z0-9_]+", "a MedMNIST flag such as pathmnist or bloodmnist"),
            "root": PATH,
            "path": opt(PATH),
            "size": SIZE,
            "download": Either((BOOL, OneOf(("auto",)))),
            "download_timeout_s": num(0, 3600, open_low=True),
            "num_classes": opt(CLASSES),
            "url": opt(Text(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", "a URL (scheme://…)")),
            "md5": opt(Text(r"[0-9a-fA-F]{32}", "32 hexadecimal digits")),
        }
    ),
    "sslpath.data.datamodule.FolderDataModule": Params(
        {
            "dir": PATH,
            "unlabeled_dir": opt(PATH),
            "val_fraction": num(0, 1, open_low=True, open_high=True),
            "test_fraction": num(0, 1, open_low=True, open_high=True),
            "size": SIZE,
            "cache_dir": PATH,
            "num_classes": opt(CLASSES),
            "max_pixels": COUNT,
        }
    ),
    "sslpath.data.stream.StreamDataModule": Params(
        {
            "dir": PATH,
            "size": SIZE,
            "num_classes": opt(CLASSES),
            "num_workers": integer(0, 256),
            "prefetch_factor": integer(1, 64),
        }
    ),
    "sslpath.data.datamodule.SyntheticDataModule": Params(
        {"size": SIZE, "train_count": COUNT, "val_count": COUNT, "test_count": COUNT}, _synthetic_memory
    ),
    # models
    "sslpath.models.backbones.build": Params(
        {
            "name": Text(r"[\w./-]+", "a backbone name: resnet18, resnet50, tiny or timm/<name>"),
            "stem": OneOf(("cifar", "imagenet", "reference")),
            "pretrained": BOOL,
            "image_size": SIZE,
        }
    ),
    "sslpath.models.base.ImageModel": Params(
        {
            "backbone": NODE,
            "optimizer": NODE,
            "scheduler": opt(NODE),
            "no_decay_norm_bias": BOOL,
            "channels_last": BOOL,
            "compile": BOOL,
            "input.augment": opt(Either((NODE, Seq(NODE, 1, 32)))),  # one pipeline, or one per view
            "input.views": integer(1, 1),  # supervised batches are (x, y)
            "input.clean_first_view": BOOL,
        }
    ),
    "sslpath.models.supervised.FineTune": Params({"pretrained_ckpt": opt(PATH), "freeze_backbone": BOOL}),
    "sslpath.models.ssl.SSLMethod": Params(
        {"joint": BOOL, "knn_k": integer(0, 10_000), "knn_temperature": POSITIVE, **SSL_VIEWS}
    ),
    "sslpath.models.ssl.SimCLR": Params(
        {
            "projector_dims": Seq(WIDTH, 1, 8),
            "projector_norm": BOOL,
            "temperature": TEMPERATURE,
            "gather_distributed": BOOL,
        }
    ),
    "sslpath.models.ssl.BarlowTwins": Params({**HEAD, "lambda_param": NON_NEGATIVE, "gather_distributed": BOOL}),
    "sslpath.models.ssl.VICReg": Params(
        {
            **HEAD,
            "projector_layers": integer(2, 32),  # lightly builds 2 layers for any value below 2
            "invariance_weight": NON_NEGATIVE,
            "variance_weight": NON_NEGATIVE,
            "covariance_weight": NON_NEGATIVE,
            "gather_distributed": BOOL,
        }
    ),
    "sslpath.models.momentum_methods.MomentumMethod": Params(
        {
            "momentum_start": EMA,
            "momentum_end": EMA,
            "momentum_max_init_share": opt(num(0, 1, open_low=True)),
            "export_target": BOOL,
        },
        _momentum_order,
    ),
    "sslpath.models.momentum_methods.BYOL": Params({**HEAD, "predictor_hidden_dim": WIDTH}),
    "sslpath.models.momentum_methods.MoCoV3": Params(
        {**HEAD, "predictor_hidden_dim": WIDTH, "temperature": TEMPERATURE, "gather_distributed": BOOL}
    ),
    "sslpath.models.momentum_methods.DINO": Params(
        {
            "head_hidden_dim": WIDTH,
            "head_bottleneck_dim": WIDTH,
            "head_dim": WIDTH,
            "head_batch_norm": BOOL,
            "norm_last_layer": BOOL,
            "freeze_last_layer_epochs": integer(0),
            "teacher_temp": TEMPERATURE,
            "warmup_teacher_temp": TEMPERATURE,
            "warmup_teacher_temp_epochs": integer(0),
            "student_temp": TEMPERATURE,
            "center_momentum": EMA,
            "clip_grad": opt(POSITIVE),
            "export": OneOf(("teacher", "student")),
            "input.views": integer(2, 32),  # two global views; extra same-size views the student alone sees
        }
    ),
    # optimisation: sslpath's own keys on any optimizer node (sslpath.models.optim.OptimizerSettings)
    "torch.optim.Optimizer": Params(
        {"reference_batch": opt(COUNT), "weight_decay_end": opt(NON_NEGATIVE), "norm_bias_lr": opt(LR)}
    ),
    "lightly.utils.lars.LARS": Params(
        {
            "lr": LR,
            "momentum": num(0, 1, open_high=True),
            "dampening": num(0, 1),
            "weight_decay": NON_NEGATIVE,
            "nesterov": BOOL,
            "trust_coefficient": POSITIVE,
            "eps": POSITIVE,
        },
        _nesterov,
    ),
    "torch.optim.Adam": Params(
        {"lr": LR, "weight_decay": NON_NEGATIVE, "betas": Seq(num(0, 1, open_high=True), 2, 2), "eps": POSITIVE, "amsgrad": BOOL}
    ),
    "torch.optim.AdamW": Params(
        {"lr": LR, "weight_decay": NON_NEGATIVE, "betas": Seq(num(0, 1, open_high=True), 2, 2), "eps": POSITIVE, "amsgrad": BOOL}
    ),
    "torch.optim.SGD": Params(
        {
            "lr": LR,
            "weight_decay": NON_NEGATIVE,
            "momentum": num(0, 1, open_high=True),  # 1 or more: the velocity never decays and grows without bound
            "dampening": num(0, 1),
            "nesterov": BOOL,
        },
        _nesterov,
    ),
    "sslpath.models.optim.warmup_cosine": Params({"warmup_epochs": NON_NEGATIVE, "min_factor": num(0, 1)}),
    "sslpath.models.optim.multistep": Params({"milestones": Seq(integer(0)), "gamma": num(0, open_low=True, usual=(None, 1))}),
    "sslpath.models.optim.constant": Params({}),
    # augmentation
    "sslpath.data.augment.Pipeline": Params({"ops": Seq(NODE)}),
    "kornia.augmentation.RandomHorizontalFlip": Params({**KORNIA_OP, "p_batch": PROB}),
    "kornia.augmentation.RandomVerticalFlip": Params({**KORNIA_OP, "p_batch": PROB}),
    "kornia.augmentation.RandomResizedCrop": Params(
        {
            **KORNIA_OP,
            "size": Seq(COUNT, 2, 2),
            "scale": pair(num(0, 1, open_low=True)),
            "ratio": pair(POSITIVE),
            "resample": RESAMPLE,
            "align_corners": BOOL,
            "cropping_mode": OneOf(("slice", "resample")),
        }
    ),
    "kornia.augmentation.ColorJitter": Params(
        {
            **KORNIA_OP,
            "brightness": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "contrast": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "saturation": Either((NON_NEGATIVE, pair(NON_NEGATIVE))),
            "hue": Either((num(0, 0.5), pair(num(-0.5, 0.5)))),
        }
    ),
    "kornia.augmentation.RandomGrayscale": Params({**KORNIA_OP, "rgb_weights": opt(Seq(NON_NEGATIVE, 3, 3))}),
    # BYOL's asymmetric views (conf/model/common/asymmetric_views.yaml)
    "kornia.augmentation.RandomGaussianBlur": Params(
        {
            **KORNIA_OP,
            "kernel_size": Either((integer(1, 255), Seq(integer(1, 255), 2, 2))),
            "sigma": Seq(POSITIVE, 2, 2, ordered=True),
            "border_type": OneOf(("constant", "reflect", "replicate", "circular")),
            "separable": BOOL,
        }
    ),
    "kornia.augmentation.RandomSolarize": Params(
        {
            **KORNIA_OP,
            "thresholds": Either((num(0, 0.5), pair(num(0, 1)))),
            "additions": Either((num(0, 0.5), pair(num(-0.5, 0.5)))),
        }
    ),
    "kornia.augmentation.RandomAffine": Params(
        {
            **KORNIA_OP,
            "degrees": Either((num(0, 360), pair(num(-360, 360)))),
            "translate": opt(Seq(num(0, 1), 2, 2)),
            "scale": opt(Either((pair(POSITIVE), Seq(POSITIVE, 4, 4)))),
            "shear": opt(Either((NON_NEGATIVE, Seq(num(-360, 360), 2, 4)))),
            "resample": RESAMPLE,
            "padding_mode": Either((OneOf(("zeros", "border", "reflection", "fill")), integer(0, 3))),
            "align_corners": BOOL,
        }
    ),
    "sslpath.data.stain.RandomHEDJitter": Params(
        {
            "alpha": num(0, 1, open_high=True),
            # optical-density units: a pixel's density spans 0 to -log(1e-6) ≈ 13.8; a larger shift makes
            # every tile black or white, and an infinite one NaN
            "beta": num(0, OD_SCALE),
            "p": PROB,
        }
    ),
    "sslpath.data.stain.RandomRotate90": Params({"p": PROB}),
    **TRAINING_TARGETS,  # the trainer, callbacks, loggers and sweeper: sslpath.checks.schema_training
}

# Settings no class receives, by config path (train.yaml's own keys and paths/).
PATHS: dict[str, Rule] = {
    "seed": SEED,
    "run_name": TEXT,
    "ckpt_path": opt(Either((OneOf(("last",)), PATH))),
    "resume": opt(PATH),
    "optimized_metric": MONITOR,  # and a metric the model logs: validate.check_metrics
    "report": BOOL,
    "report_figures": BOOL,
    "paths.data_dir": PATH,
    "paths.log_dir": PATH,
    "paths.output_dir": PATH,
    "paths.pretrain_dir": PATH,
    # label-efficiency protocol (sslpath.training.protocol)
    "budget": OneOf(BUDGETS),
    "selection": OneOf(SELECTIONS),
    # frozen-feature evaluation at the end of SSL runs (sslpath.evaluation.features)
    "frozen_eval.enabled": BOOL,
    "frozen_eval.knn_k": integer(1, 10_000),
    "frozen_eval.knn_temperature": POSITIVE,
    "frozen_eval.l2": Seq(num(0), 1, 64),
    "frozen_eval.max_iter": integer(1, 100_000),
    "frozen_eval.batch_size": COUNT,
    # intervals and calibration of the test metrics (conf/eval/default.yaml; docs/evidence.md)
    "eval.bootstrap_resamples": integer(*RESAMPLES_RANGE),
    "eval.bootstrap_seed": integer(*SEED_RANGE),
    "eval.ci_level": num(*LEVEL_RANGE),
    "eval.ece_bins": integer(1, 1000),
    # evaluate's frozen-feature protocols (conf/protocol/, sslpath.evaluation.protocols) and public encoders
    "protocol.name": OneOf(("knn", "linear", "fewshot")),
    "protocol.k": Seq(integer(1, 100_000), 1, 64),
    "protocol.temperature": TEMPERATURE,
    "protocol.l2": Seq(num(0), 1, 64),
    "protocol.max_iter": integer(1, 100_000),
    "protocol.label_fractions": Seq(SPLIT_SHARE, 1, 64),
    "protocol.seeds": integer(2, 10_000),  # at least two: each point's interval is over seeds
    "protocol.shots": Seq(integer(1, 100_000), 1, 64),
    "protocol.logistic_l2": num(0),
    "features.cache_dir": opt(PATH),
    "features.batch_size": COUNT,
    "encoder.name": opt(Text(r"timm/[a-z0-9_.]+", "timm/<name>, a name in timm's registry (e.g. timm/resnet50)")),
    "encoder.weights": opt(PATH),
    "encoder.image_size": opt(SIZE),
    "encoder.mean": opt(Seq(num(-MAX_ABS_MEAN, MAX_ABS_MEAN), 3, 3)),
    "encoder.std": opt(Seq(num(MIN_STD, MAX_STD), 3, 3)),
}

NOT_MODEL_ARGS = ("input", "pretrained_ckpt")  # keys of a model config that are not its class's arguments
