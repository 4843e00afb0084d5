"""Size limits on configs, so hostile YAML is refused quickly instead of exhausting the machine.

A real policy config (the packaged ones, the ones in the docs) has a few hundred values, nests
fewer than 10 levels, reads a handful of files of a few KB and resolves a few dozen ``${...}``
strings of at most a few hundred characters. Every limit here is 50x or more above that, so only
a YAML alias bomb ("billion laughs"), a ``defaults:`` diamond, a self-doubling ``${}`` chain or
a file of hundreds of KB reaches one; the ConfigError then names the file (and the key and line
where known), the limit and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FILE_BYTES = 256 << 10
"""Largest YAML file read (256 KiB; a config is a few KB). PyYAML parses about 250 KB/s, so this
also bounds the time spent on one file."""

MAX_TOTAL_BYTES = 512 << 10
"""Bytes read, all files of one config together (``defaults:`` and component files)."""

MAX_NODES = 50_000
"""Values (scalars, lists and mappings, aliases expanded) in one file or override value, and in
all the files of one config together. The size of a YAML document is counted on the parsed node
graph before anything is built, so an alias bomb costs microseconds to refuse."""

MAX_DEPTH = 64
"""Nesting levels of lists and mappings in a config (aliases and ``${...}`` expanded)."""

MAX_FILES = 256
"""Files read for one config (each ``defaults:`` entry and component file counts once per read;
a diamond of ``defaults:`` reads a shared file once per path to it)."""

MAX_STRING_CHARS = 100_000
"""Characters in one string built by ``${...}`` interpolation."""

MAX_RESOLVED = 250_000
"""Values visited and copied by interpolation: a reference to a list copies the list, so lists
of references to lists of references can double in size per step."""

MAX_RESOLVED_CHARS = 10_000_000
"""Characters of the strings interpolation builds and copies, all together."""

MAX_REF_CHAIN = 64
"""References resolved inside one another (``a: ${b}``, ``b: ${c}``, ...)."""


@dataclass
class ReadBudget:
    """What the files of one config have used so far, checked against the limits above."""

    files: int = 0
    bytes: int = 0
    nodes: int = 0
