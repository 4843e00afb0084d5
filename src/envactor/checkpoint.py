"""Checkpoint directories: resolved config, one safetensors file per component, stats, meta.

    ckpt/
      policy.yaml              the config the policy was built from
      <component>.safetensors  one file per component
      normalizer.safetensors   stats and modes (when the policy has a normalizer)
      meta.json                versions, step, weight version, sha256 of every other file

A save writes a temporary sibling directory (named for the writing process, see
``envactor.fsio``), fsyncs it, and renames it into place; the previous checkpoint is renamed
aside first and deleted last, so a failure before the final rename leaves it intact. Every save
and load removes the temporaries of killed saves in the same parent once their writer is
provably dead. Loading is strict: checksums, the file list and (with ``load_components_strict``)
every tensor name and shape are checked, and errors name the file and the tensor.

``resolve_checkpoint_dir`` turns what a user passes into the checkpoint directory: a checkpoint
directory; a training step directory or a run's ``checkpoints/last`` pointer (its ``policy/``);
a checkpoint missing after a save interrupted between its two renames (the old one set aside).
Temporary directories, training run directories and directories without a valid ``meta.json``
are refused with an error that lists what is there.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from envactor.config import ConfigError, dump_yaml, load_yaml
from envactor.fsio import (
    clean_stale_temps,
    is_temp_name,
    make_temp_dir,
    temp_owner,
    temp_target,
    writer_is_dead,
)
from envactor.fsio import fsync_path as _fsync_path
from envactor.fsio import write_text as _write_text
from envactor.normalize import Normalizer, NormalizerError
from envactor.weights import WeightsError, check_state_dict, load_state_dict_into

__all__ = [
    "CONFIG_FILE",
    "META_FILE",
    "NORMALIZER_FILE",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "load_components_strict",
    "read_meta",
    "refers_to_checkpoint",
    "resolve_checkpoint_dir",
    "save_checkpoint",
]

CONFIG_FILE = "policy.yaml"
META_FILE = "meta.json"
NORMALIZER_FILE = "normalizer.safetensors"
FORMAT_VERSION = 1

# the trainer's run layout (envactor.train.state): <run>/checkpoints/step_<n>/policy/ and a
# text file <run>/checkpoints/last holding the name of the newest step directory
RUN_CHECKPOINTS_DIR = "checkpoints"
RUN_LAST_FILE = "last"
STEP_POLICY_DIR = "policy"
STEP_DIR = re.compile(r"^step_(\d+)$")
_SHOWN = 6  # checkpoint directories named in an error before eliding


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or does not match what loading expects."""


@dataclass
class Checkpoint:
    """A loaded checkpoint directory (tensors on CPU)."""

    path: Path
    config: dict[str, Any]
    component_state: dict[str, dict[str, Tensor]]
    normalizer: Normalizer | None
    meta: dict[str, Any]


def _envactor_version() -> str:
    try:
        return importlib.metadata.version("envactor")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _component_file(name: str) -> str:
    return f"{name}.safetensors"


def _check_component_name(name: str) -> None:
    bad = not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name
    if bad or _component_file(name) == NORMALIZER_FILE:
        raise CheckpointError(
            f"component name {name!r} cannot be a file name: expected a non-empty name without "
            f"path separators or a leading '.', other than 'normalizer'"
        )


def _save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)
    _fsync_path(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cpu_tensors(name: str, source: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors; storage shared between entries is split by cloning."""
    sd = source.state_dict() if isinstance(source, nn.Module) else source
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"component {name!r} entry {key!r}: expected a torch.Tensor, "
                f"found {type(value).__name__}"
            )
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(ptr)
        out[key] = t
    return out


def _aside_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _recover_aside(target: Path) -> None:
    """Undo a save interrupted between its two renames (old checkpoint still aside)."""
    aside = _aside_dir(target)
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside)  # the new checkpoint made it; the old one was not deleted yet
        else:
            os.rename(aside, target)


def save_checkpoint(
    path: str | Path,
    *,
    config: Mapping[str, Any],
    components: Mapping[str, nn.Module | Mapping[str, Tensor]],
    normalizer: Normalizer | None,
    step: int = 0,
    weight_version: int = 0,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing one already there)."""
    target = Path(path)
    for name in components:
        _check_component_name(name)
    try:
        config_text = dump_yaml(_plain(config))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{CONFIG_FILE}: config is not plain YAML data: {e}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_aside(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: expected a checkpoint directory, found a file")
    clean_stale_temps(target.parent)
    tmp = make_temp_dir(target)
    aside: Path | None = None
    try:
        _write_text(tmp / CONFIG_FILE, config_text)
        for name, source in components.items():
            tensors = _cpu_tensors(name, source)
            _save_tensors(tmp / _component_file(name), tensors, {"envactor.component": name})
        if normalizer is not None:
            _save_tensors(tmp / NORMALIZER_FILE, normalizer.state_dict(), normalizer.metadata())
        files = sorted(p.name for p in tmp.iterdir())
        meta = {
            "format": FORMAT_VERSION,
            "envactor_version": _envactor_version(),
            "torch_version": torch.__version__,
            "step": int(step),
            "weight_version": int(weight_version),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "components": list(components),
            "normalizer": normalizer is not None,
            "sha256": {f: _sha256(tmp / f) for f in files},
            "extra": dict(extra_meta or {}),
        }
        try:
            meta_text = json.dumps(meta, indent=2)
        except TypeError as e:
            raise CheckpointError(f"{META_FILE}: extra_meta is not JSON data: {e}") from e
        _write_text(tmp / META_FILE, meta_text)
        _fsync_path(tmp)
        if target.exists():
            aside = _aside_dir(target)
            os.rename(target, aside)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not target.exists():
            os.rename(aside, target)
        raise
    _fsync_path(target.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def _plain(value: Any) -> Any:
    """Mappings and tuples as dicts and lists, so ``dump_yaml`` accepts them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_EXPECTED = (
    f"a checkpoint directory written by envactor: {META_FILE} (with the sha256 of every file), "
    f"{CONFIG_FILE} and one <component>.safetensors per component"
)


_CONFIG_EXPECTED = (
    "the resolved policy config envactor writes: a mapping with 'model:' and 'policy:' at the "
    "top level"
)


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )


def _listing(root: Path, limit: int = 12) -> str:
    """``found a, b/, ...`` for the entries of ``root`` (directories end in ``/``)."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError as e:
        return f"cannot list it ({e.strerror or type(e).__name__})"
    if not names:
        return "found an empty directory"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return f"found {', '.join(names[:limit])}{more}"


def _meta_problem(meta: object) -> str | None:
    """What is wrong with a parsed ``meta.json`` (None when it has the expected shape)."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, found {type(meta).__name__}"
    fmt = meta.get("format")
    if type(fmt) is not int or fmt < 1:
        found = repr(fmt) if type(fmt) is int else type(fmt).__name__
        return f"'format': expected an integer >= 1, found {found}"
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        return f"'sha256': expected a map of file name to checksum, found {type(sums).__name__}"
    for name, digest in sums.items():
        if not _plain_name(name) or name == META_FILE or not isinstance(digest, str):
            return "'sha256': expected plain file names in this directory with string checksums"
    comps = meta.get("components")
    if not isinstance(comps, list) or not all(_plain_name(c) for c in comps):
        return "'components': expected a list of component names (plain file names)"
    if not isinstance(meta.get("normalizer", False), bool):
        return f"'normalizer': expected true or false, found {type(meta['normalizer']).__name__}"
    for key in ("step", "weight_version"):
        if key in meta and type(meta[key]) is not int:
            return f"{key!r}: expected an integer, found {type(meta[key]).__name__}"
    return None


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory, checked for shape, without reading any tensor."""
    root = Path(path)
    meta_path = root / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(
            f"{root}: not a checkpoint, {META_FILE} is missing; expected {_EXPECTED}; "
            f"{_listing(root)}"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{meta_path}: cannot read ({type(e).__name__}); expected the UTF-8 JSON "
            f"{META_FILE} of {_EXPECTED}"
        ) from e
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise CheckpointError(
            f"{meta_path}: not valid JSON ({e}); expected the {META_FILE} of {_EXPECTED}; "
            f"{_listing(root)}"
        ) from e
    problem = _meta_problem(meta)
    if problem is not None:
        raise CheckpointError(
            f"{meta_path}: {problem}; expected the {META_FILE} of {_EXPECTED}; {_listing(root)}"
        )
    return dict(meta)


def _step_number(path: Path) -> int:
    m = STEP_DIR.match(path.name)
    return int(m.group(1)) if m else -1


def _is_step_dir(path: Path) -> bool:
    return STEP_DIR.match(path.name) is not None and (path / STEP_POLICY_DIR).is_dir()


def _checkpoints_inside(root: Path, depth: int = 4, budget: int = 500) -> list[Path]:
    """Checkpoint and training step directories under ``root`` (bounded walk, no hidden dirs)."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth):
        below: list[Path] = []
        for d in level:
            try:
                children = [p for p in d.iterdir() if not p.name.startswith(".") and p.is_dir()]
            except OSError:
                continue
            for child in children:
                budget -= 1
                if budget < 0:
                    break
                if _is_step_dir(child) or (child / META_FILE).is_file():
                    found.append(child)
                else:
                    below.append(child)
        level = below
    return sorted(found, key=lambda p: (str(p.parent), _step_number(p), p.name))


def _name_paths(paths: list[Path]) -> str:
    names = [str(p) for p in paths]
    if len(names) <= _SHOWN:
        return ", ".join(names)
    return f"{', '.join([*names[:2], '...', *names[-3:]])} ({len(names)} in all)"


def _last_hint(found: list[Path]) -> str:
    for parent in dict.fromkeys(p.parent for p in reversed(found) if _is_step_dir(p)):
        if (parent / RUN_LAST_FILE).is_file():
            return f"; {parent / RUN_LAST_FILE} names the newest"
    return ""


def _refuse_temp(path: Path) -> None:
    """A path inside a temporary directory of a save is never a checkpoint."""
    for i, part in enumerate(path.parts):
        if not is_temp_name(part):
            continue
        tmp = Path(*path.parts[: i + 1])
        final = tmp.with_name(temp_target(part) or part)
        owner = temp_owner(part)
        if owner is None:
            state = "it may be incomplete; delete it once no save is running"
        elif writer_is_dead(owner):
            state = (
                f"its writer (pid {owner.pid}) is gone, so it is incomplete or abandoned; the "
                f"next save or load in {tmp.parent} deletes it"
            )
        else:
            state = f"its writer (pid {owner.pid}) may still be writing it"
        raise CheckpointError(
            f"{tmp}: a temporary directory of a save of {final}, not a checkpoint ({state}); "
            f"load {final} instead"
        )


def _follow_last(pointer: Path) -> Path:
    """The step directory named by a run's ``checkpoints/last`` pointer file."""
    ck_dir = pointer.parent
    steps = [p for p in _checkpoints_inside(ck_dir, depth=1) if _is_step_dir(p)]
    inside = f"checkpoints in {ck_dir}: {_name_paths(steps) if steps else 'none'}"
    if not pointer.is_file():
        raise CheckpointError(
            f"{pointer}: no such file (the trainer writes it with its first checkpoint); {inside}"
        )
    try:
        with open(pointer, "rb") as f:
            name = f.read(256).decode("utf-8").strip()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{pointer}: cannot read ({type(e).__name__}); {inside}") from e
    step = ck_dir / name
    if STEP_DIR.match(name) is None or not (step.is_dir() or _aside_dir(step).is_dir()):
        raise CheckpointError(
            f"{pointer}: expected the name of a step_<n> directory next to it, found none that "
            f"exists; {inside}"
        )
    return step


def _is_last_pointer(path: Path) -> bool:
    return path.name == RUN_LAST_FILE and path.parent.name == RUN_CHECKPOINTS_DIR


def refers_to_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` can only mean a checkpoint (so a file there is not read as YAML).

    True for an existing directory, a run's ``checkpoints/last``, a missing checkpoint whose
    interrupted save left it aside, a path under a save's temporary directory, and a missing
    entry of a run's ``checkpoints`` directory.
    """
    p = Path(path)
    return (
        p.is_dir()
        or _is_last_pointer(p)
        or any(is_temp_name(part) for part in p.parts)
        or (not p.exists() and _aside_dir(p).is_dir())
        or (not p.exists() and p.parent.name == RUN_CHECKPOINTS_DIR and p.parent.is_dir())
    )


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names, or a ``CheckpointError`` saying why it is none.

    Accepted: a checkpoint directory; a training step directory ``checkpoints/step_<n>`` and a
    run's ``checkpoints/last`` pointer (both mean that step's ``policy/`` checkpoint); a
    checkpoint missing after a save interrupted between its two renames (the previous checkpoint,
    set aside as ``.<name>.old``, is used with a warning). Refused: temporary directories of a
    save, training run directories (the error lists the checkpoints inside) and directories
    without a ``meta.json`` (the error lists what is there). ``meta.json`` itself is checked by
    ``read_meta``.
    """
    given = Path(path)
    _refuse_temp(given)
    root = given
    if _is_last_pointer(root) and not root.is_dir():
        root = _follow_last(root)
    if not root.is_dir():
        aside = _aside_dir(root)
        if aside.is_dir():
            warnings.warn(
                f"{root} missing; loading {aside} left by an interrupted save",
                RuntimeWarning,
                stacklevel=3,
            )
            if STEP_DIR.match(root.name) and (aside / STEP_POLICY_DIR).is_dir():
                return resolve_checkpoint_dir(aside / STEP_POLICY_DIR)
            return aside
        near = _checkpoints_inside(root.parent, depth=1) if root.parent.is_dir() else []
        where = f"; checkpoints in {root.parent}: {_name_paths(near)}" if near else ""
        raise CheckpointError(f"{root}: no such checkpoint directory{where}")
    if (root / META_FILE).exists():
        return root
    if _is_step_dir(root):
        return resolve_checkpoint_dir(root / STEP_POLICY_DIR)
    found = _checkpoints_inside(root)
    if found:
        run = (
            root.name == RUN_CHECKPOINTS_DIR
            or (root / RUN_CHECKPOINTS_DIR).is_dir()
            or any(_is_step_dir(p) for p in found)
        )
        kind = "a training run" if run else "a directory of checkpoints"
        raise CheckpointError(
            f"{root} is {kind}, not a checkpoint; checkpoints inside: {_name_paths(found)}"
            f"{_last_hint(found)}"
        )
    raise CheckpointError(
        f"{root}: not a checkpoint, {META_FILE} is missing; expected {_EXPECTED}; {_listing(root)}"
    )


def _clean_around(root: Path) -> None:
    """Remove dead writers' temporaries next to a loaded checkpoint (and its training step)."""
    clean_stale_temps(root.parent)
    if root.name == STEP_POLICY_DIR and _is_step_dir(root.parent):
        clean_stale_temps(root.parent.parent)


def _check_files(root: Path, meta: dict[str, Any], verify: bool) -> None:
    listed: dict[str, str] = meta["sha256"]
    expected = {CONFIG_FILE, *(_component_file(c) for c in meta.get("components", []))}
    if meta.get("normalizer"):
        expected.add(NORMALIZER_FILE)
    unchecked = sorted(expected - set(listed))
    if unchecked:
        raise CheckpointError(f"{root / META_FILE}: no checksum listed for {unchecked}")
    for name in sorted(listed):
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: missing (listed in {META_FILE})")
    present = {p.name for p in root.iterdir()} - {META_FILE}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise CheckpointError(f"{root}: files not listed in {META_FILE}: {unlisted}")
    if verify:
        for name, want in sorted(listed.items()):
            found = _sha256(root / name)
            if found != want:
                raise CheckpointError(
                    f"{root / name}: sha256 mismatch: expected {want}, found {found}"
                )


def _read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's ``policy.yaml``, read with the config loader's limits (an alias bomb or
    an oversized file is refused in milliseconds); any problem is one ``CheckpointError`` line."""
    try:
        return load_yaml(path, expected=_CONFIG_EXPECTED).data
    except ConfigError as e:
        text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{text} (not a config envactor saves)") from None


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint directory; with ``verify`` every file's sha256 is checked.

    ``path`` is resolved by ``resolve_checkpoint_dir`` (a step directory or ``checkpoints/last``
    of a training run also work); temporaries of killed saves next to it are removed.
    """
    root = resolve_checkpoint_dir(path)
    _clean_around(root)
    meta = read_meta(root)
    if meta["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{root / META_FILE}: checkpoint format {meta.get('format')} is newer than this "
            f"envactor reads (format {FORMAT_VERSION}); upgrade envactor"
        )
    _check_files(root, meta, verify)
    config = _read_config(root / CONFIG_FILE)
    state: dict[str, dict[str, Tensor]] = {}
    for name in meta.get("components", []):
        file = root / _component_file(name)
        try:
            state[name] = load_file(str(file))
        except Exception as e:  # safetensors raises its own error type
            raise CheckpointError(f"{file}: cannot read tensors: {e}") from e
    normalizer = None
    if meta.get("normalizer"):
        try:
            normalizer = Normalizer.load(root / NORMALIZER_FILE)
        except NormalizerError as e:
            raise CheckpointError(str(e)) from e
    return Checkpoint(root, config, state, normalizer, meta)


def load_components_strict(ckpt: Checkpoint, components: Mapping[str, nn.Module]) -> None:
    """Copy every component's tensors into its module in place; any mismatch is an error.

    All components are checked before any is written, so a failure leaves the modules as
    they were.
    """
    have, want = set(ckpt.component_state), set(components.keys())
    if have != want:
        raise CheckpointError(
            f"{ckpt.path}: components differ: checkpoint has {sorted(have)}, modules are "
            f"{sorted(want)} (only in checkpoint: {sorted(have - want)}, "
            f"only in modules: {sorted(want - have)})"
        )
    for stage in (check_state_dict, load_state_dict_into):
        for name, module in components.items():
            try:
                stage(module, ckpt.component_state[name], strict=True)
            except WeightsError as e:
                raise CheckpointError(f"{ckpt.path / _component_file(name)}: {e}") from e
