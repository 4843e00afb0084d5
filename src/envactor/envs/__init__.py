"""Embedded tasks (gymnasium ids ``envactor/...``) and their scripted experts.

Importing this package registers the tasks with gymnasium and the experts with
``POLICY_REGISTRY`` (``pendulum_expert``, ``reacher_expert``). MuJoCo is imported only when
``envactor/ReacherReach-v0`` is made.

    envactor/PendulumSwingUp-v0   pendulum swing-up from hanging, bimodal expert (20 Hz)
    envactor/PendulumSwingUp50-v0 the same task controlled at 50 Hz (the demo's)
    envactor/ReacherReach-v0      MuJoCo 2-link reacher, IK + joint PD expert
"""

from envactor.envs.pendulum_expert import PendulumExpert
from envactor.envs.reacher_expert import ReacherExpert
from envactor.envs.tasks import (
    CONFIG_DIR,
    TASKS,
    UnknownEnvError,
    check_env_id,
    register_tasks,
    task_spec,
)

register_tasks()

__all__ = [
    "CONFIG_DIR",
    "TASKS",
    "PendulumExpert",
    "ReacherExpert",
    "UnknownEnvError",
    "check_env_id",
    "register_tasks",
    "task_spec",
]
