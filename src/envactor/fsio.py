"""Durable file writes shared by checkpoints, datasets and trainer state (fsync before rename).

Directories are written under a temporary sibling name and renamed into place. The temporary
name records who is writing it::

    .<target>.tmp-<pid>-<start>-<host>-<boot>-<random>

``pid`` and ``start`` (the process start time in clock ticks since boot, from ``/proc``; 0 where
unknown) identify the writing process, ``host`` and ``boot`` are short hashes of the host name
and of the kernel boot id. A killed writer leaves its temporary behind; ``clean_stale_temps``
removes only the ones it can prove dead: same host, and a different boot, or no process with
that pid, or a process with that pid that started at another time (the pid was reused). A
temporary of a live writer, of another host, or in an older naming without these fields is kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "TEMP_MARK",
    "TempOwner",
    "clean_stale_temps",
    "fsync_path",
    "is_temp_name",
    "make_temp_dir",
    "process_start_time",
    "temp_owner",
    "temp_target",
    "write_text",
    "writer_is_dead",
]

TEMP_MARK = ".tmp-"
_TEMP = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<rest>.*)$", re.DOTALL)
_OWNER = re.compile(
    r"^(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-[a-z0-9_]+$"
)
_UNKNOWN = "0" * 8


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` and fsync it; parent directories are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8] if text else _UNKNOWN


@lru_cache(maxsize=1)
def _host_tag() -> str:
    return _tag(socket.gethostname())


@lru_cache(maxsize=1)
def _boot_tag() -> str:
    try:
        return _tag(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        return _UNKNOWN


def process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def make_temp_dir(target: Path) -> Path:
    """Create an empty temporary sibling of ``target`` named for this process (see module doc)."""
    pid = os.getpid()
    start = process_start_time(pid) or 0
    prefix = f".{target.name}{TEMP_MARK}{pid}-{start}-{_host_tag()}-{_boot_tag()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary directory name of a save (any naming, old or current)."""
    return _TEMP.match(name) is not None


def temp_target(name: str) -> str | None:
    """The name of the directory a temporary ``name`` was going to become, or None."""
    m = _TEMP.match(name)
    return m.group("target") if m else None


@dataclass(frozen=True)
class TempOwner:
    """The writer a temporary directory is named for."""

    pid: int
    start: int  # 0: unknown
    host: str
    boot: str

    @property
    def same_host(self) -> bool:
        """Whether the writer ran on this host."""
        return self.host == _host_tag()


def temp_owner(name: str) -> TempOwner | None:
    """The writer encoded in a temporary directory ``name``; None for other names."""
    m = _TEMP.match(name)
    o = _OWNER.match(m.group("rest")) if m else None
    if o is None:
        return None
    return TempOwner(int(o.group("pid")), int(o.group("start")), o.group("host"), o.group("boot"))


def writer_is_dead(owner: TempOwner) -> bool:
    """True only when the writing process provably no longer runs (see module doc)."""
    if not owner.same_host:
        return False
    boot = _boot_tag()
    if _UNKNOWN not in (boot, owner.boot) and boot != owner.boot:
        return True  # written before the last reboot
    if owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process with that pid exists (another user's)
    except OSError:
        return False
    now = process_start_time(owner.pid)
    return owner.start != 0 and now is not None and now != owner.start


def clean_stale_temps(parent: Path) -> list[Path]:
    """Remove temporary directories in ``parent`` whose writer is provably dead; best effort.

    Returns the directories removed. Errors (a read-only or vanished parent, a race with another
    cleaner) are ignored: cleaning never makes a save or a load fail.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None or not writer_is_dead(owner):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed
