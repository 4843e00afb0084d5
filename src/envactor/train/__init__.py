"""Learn mode: train a policy on a demonstration dataset, with resumable checkpoints.

``train(policy_or_yaml, dataset_root, out_dir=..., steps=...)`` is the entry point;
``add_train_args``/``run_train`` are the ``envactor train`` command. A registered policy name
trained on a dataset takes its input features (cameras included) and action dimension from it
(``envactor.train.from_dataset``).
"""

from envactor.train.cli import add_train_args, run_train
from envactor.train.loop import (
    LOG_FILE,
    TrainConfig,
    TrainResult,
    check_dataset,
    lr_at,
    norm_modes,
    stats_summary,
    train,
)
from envactor.train.state import (
    TrainError,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
)

__all__ = [
    "LOG_FILE",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "add_train_args",
    "check_dataset",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "lr_at",
    "norm_modes",
    "run_train",
    "stats_summary",
    "train",
]
