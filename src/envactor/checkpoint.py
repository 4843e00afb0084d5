"""Checkpoint directories: resolved config, one safetensors file per component, stats, meta.

    ckpt/
      policy.yaml              the config the policy was built from
      <component>.safetensors  one file per component
      normalizer.safetensors   stats and modes (when the policy has a normalizer)
      meta.json                versions, step, weight version, sha256 of every other file

A save writes a temporary sibling directory, fsyncs it, and renames it into place; the previous
checkpoint is renamed aside first and deleted last, so a failure before the final rename leaves
it intact. Loading is strict: checksums, the file list and (with ``load_components_strict``)
every tensor name and shape are checked, and errors name the file and the tensor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
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
    "save_checkpoint",
]

CONFIG_FILE = "policy.yaml"
META_FILE = "meta.json"
NORMALIZER_FILE = "normalizer.safetensors"
FORMAT_VERSION = 1


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
        config_text = yaml.safe_dump(_plain(config), sort_keys=False)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{CONFIG_FILE}: config is not plain YAML data: {e}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_aside(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: expected a checkpoint directory, found a file")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
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
    """Mappings and tuples as dicts and lists, so ``yaml.safe_dump`` accepts them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory, without reading any tensor."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing; is {path} a checkpoint directory?") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: cannot read: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object with a 'sha256' map")
    return meta


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


def load_checkpoint(path: str | Path, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint directory; with ``verify`` every file's sha256 is checked."""
    root = Path(path)
    if not root.is_dir() and _aside_dir(root).is_dir():
        warnings.warn(
            f"{root} missing; loading {_aside_dir(root)} left by an interrupted save",
            RuntimeWarning,
            stacklevel=2,
        )
        root = _aside_dir(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    meta = read_meta(root)
    if int(meta.get("format", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{root / META_FILE}: checkpoint format {meta.get('format')} is newer than this "
            f"envactor reads (format {FORMAT_VERSION}); upgrade envactor"
        )
    _check_files(root, meta, verify)
    try:
        config = yaml.safe_load((root / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{root / CONFIG_FILE}: invalid YAML: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{root / CONFIG_FILE}: expected a mapping at top level")
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
