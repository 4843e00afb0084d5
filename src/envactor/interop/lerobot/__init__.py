"""LeRobot checkpoints as envactor policies (``build_policy(DIR)`` on a ``pretrained_model``
folder). LeRobot itself is imported only when such a folder is loaded."""

from envactor.interop.lerobot.checkpoint import (
    INSTALL_HINT,
    LeRobotCheckpointError,
    LeRobotNotInstalledError,
    describe_checkpoint,
    lerobot_checkpoint_dir,
)
from envactor.interop.lerobot.policy import LeRobotParams, LeRobotPolicy, load_lerobot_policy

__all__ = [
    "INSTALL_HINT",
    "LeRobotCheckpointError",
    "LeRobotNotInstalledError",
    "LeRobotParams",
    "LeRobotPolicy",
    "describe_checkpoint",
    "lerobot_checkpoint_dir",
    "load_lerobot_policy",
]
