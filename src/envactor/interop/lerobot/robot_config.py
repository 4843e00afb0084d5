"""Make a LeRobot robot from the command line: ``--robot TYPE`` through LeRobot's config
registry (the names ``--robot.type`` takes in LeRobot's own scripts, third-party
``lerobot_robot_*`` packages included), or ``--robot-module
mod:Class`` for a robot class of one's own; ``--robot-opt key=value`` fills its config.

Options are parsed by draccus, LeRobot's own config parser, so their values are written as in
LeRobot's scripts (``cameras="{front: {type: opencv, index_or_path: 0, width: 640, height:
480, fps: 30}}"``, ``max_relative_target=5``); a key the config does not have is refused with
the keys it has before draccus sees it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import io
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RobotSpecError", "make_robot", "parse_options", "robot_types"]


class RobotSpecError(ValueError):
    """``--robot``, ``--robot-module`` or ``--robot-opt`` cannot make a robot (the message says
    what was expected)."""


def _lerobot(module: str) -> Any:
    try:
        return importlib.import_module(f"lerobot.{module}")
    except ModuleNotFoundError as exc:
        from envactor.interop.lerobot.checkpoint import INSTALL_HINT

        raise RobotSpecError(
            f"--robot needs LeRobot ({exc.name!r} is not installed): {INSTALL_HINT}"
        ) from None


def _import_all(package: Any) -> dict[str, str]:
    """Import every subpackage of ``package`` (each registers its configs); those that fail
    (a vendor SDK not installed) by name, with why."""
    failed: dict[str, str] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"{package.__name__}.{info.name}")
            except Exception as exc:  # a robot whose SDK is missing must not hide the others
                failed[info.name] = f"{type(exc).__name__}: {exc}"
    return failed


def robot_types() -> tuple[list[str], dict[str, str]]:
    """The robot types LeRobot's registry knows here, and the robot packages that failed to
    import (with why)."""
    robots = _lerobot("robots")
    failed = _import_all(robots)
    _import_all(_lerobot("cameras"))  # camera configs register too (opencv, realsense, ...)
    plugins = getattr(_lerobot("utils.import_utils"), "register_third_party_plugins", None)
    if plugins is not None:  # installed lerobot_robot_* / lerobot_camera_* packages
        plugins()
    return sorted(robots.RobotConfig.get_known_choices()), failed


def parse_options(config_class: type, options: Sequence[str], flag: str = "--robot-opt") -> Any:
    """A ``config_class`` instance from ``key=value`` strings, parsed by draccus."""
    fields = (
        {f.name for f in dataclasses.fields(config_class)}
        if dataclasses.is_dataclass(config_class)
        else set()
    )
    args = []
    for text in options:
        key, sep, value = text.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise RobotSpecError(f"{flag} {text!r}: expected KEY=VALUE")
        top = key.split(".")[0]
        if fields and top not in fields:
            close = difflib.get_close_matches(top, sorted(fields), n=2)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise RobotSpecError(
                f"{flag} {text!r}: {config_class.__name__} has no option {top!r}{hint} "
                f"(options: {', '.join(sorted(fields))})"
            )
        args.append(f"--{key}={value}")
    import draccus

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return draccus.parse(config_class=config_class, args=args)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        why = lines[-1].split("error:", 1)[-1].strip() if lines else "invalid options"
        raise RobotSpecError(f"{flag}: {config_class.__name__}: {why}") from None
    except Exception as exc:  # the config's own checks (__post_init__)
        raise RobotSpecError(f"{flag}: {config_class.__name__}: {exc}") from None


def _loaded_from(path: Path) -> Any:
    """The module already imported from ``path`` (under any name), or None: a file is run
    once, so the configs it registers with LeRobot are registered once."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    return None


def _exec_file(path: Path) -> Any:
    name = f"envactor_robot_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_class(spec: str) -> type:
    """``package.module:Class`` (the current folder is importable, as with ``python -m``) or
    ``path/to/file.py:Class``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise RobotSpecError(
            f"--robot-module {spec!r}: expected MODULE:CLASS or FILE.py:CLASS, e.g. "
            "my_robots.arm:MyArm"
        )
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise RobotSpecError(f"--robot-module {spec!r}: no file {target}")
            module = _loaded_from(path) or _exec_file(path)
        else:
            cwd = str(Path.cwd())
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(target)
            finally:
                if added:
                    sys.path.remove(cwd)
    except RobotSpecError:
        raise
    except ImportError as exc:
        raise RobotSpecError(f"--robot-module {spec!r}: cannot import {target!r}: {exc}") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise RobotSpecError(f"--robot-module {spec!r}: {target!r} has no class {name!r}")
    return cls


def make_robot(
    robot_type: str | None = None, module: str | None = None, options: Sequence[str] = ()
) -> Any:
    """A LeRobot robot (not connected): of ``robot_type`` from LeRobot's registry, or of the
    class ``module`` names (built from its ``config_class`` when it has one, else from the
    options as keyword arguments)."""
    if (robot_type is None) == (module is None):
        raise RobotSpecError("give one of --robot TYPE and --robot-module MODULE:CLASS")
    if module is not None:
        cls = _load_class(module)
        config_class = getattr(cls, "config_class", None)
        if isinstance(config_class, type):
            return cls(parse_options(config_class, options))
        kwargs = dict(o.partition("=")[::2] for o in options)
        return cls(**kwargs)
    known, failed = robot_types()
    assert robot_type is not None
    if robot_type not in known:
        close = difflib.get_close_matches(robot_type, known, n=2)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        skipped = f"; not importable here: {', '.join(sorted(failed))}" if failed else ""
        raise RobotSpecError(
            f"--robot {robot_type!r}: not a LeRobot robot type; {hint}known: "
            f"{', '.join(known)}{skipped}"
        )
    robots = _lerobot("robots")
    config = parse_options(robots.RobotConfig.get_choice_class(robot_type), options)
    try:
        return robots.make_robot_from_config(config)
    except ModuleNotFoundError as exc:
        raise RobotSpecError(
            f"--robot {robot_type}: its driver needs {exc.name!r}, which is not installed: "
            "install LeRobot's extra for the robot's motors (e.g. pip install "
            "'lerobot[feetech]' for SO-100/101, 'lerobot[dynamixel]' for Koch)"
        ) from None
    except Exception as exc:
        raise RobotSpecError(f"--robot {robot_type}: LeRobot could not make it: {exc}") from None
