"""Every ```python block of README.md and docs/*.md runs as written.

The rules a page follows (they are what a reader may rely on when copying a block):

- A block whose first line is ``# continues the block above`` runs after the block before it on
  the same page, in its namespace and its working directory. Every other block is standalone:
  it runs in a fresh namespace with a fresh, empty working directory, so a block that quietly
  needs an earlier one fails here.
- A ```python-norun block is not run (the page says why next to it, e.g. it needs a Ray cluster
  or your own learner); it must still compile.
- No other Python-looking fence tag (```py, ```python3, ```pycon, ...) is allowed: such a block
  would escape this test silently.

Prepared artifacts: README's "A first look" loads the demo's checkpoint ``runs/demo/policy``,
which ``make demo`` writes. The full demo takes minutes, so the test makes a stand-in once per
session with the same pipeline in miniature (the pendulum expert's demonstrations, ``train`` on
a ``flow`` policy with the demo's model settings, ``save_policy``; a few seconds) and copies it to
``runs/demo/policy`` of every chain whose code names that path. Its numbers are meaningless; the
point is that the block runs unchanged against a checkpoint of the demo's kind. Blocks that
name ``tests/fixtures/lerobot`` (a real LeRobot dataset and checkpoints in the repository) see
it at that path, as when run from the repository root. Blocks that use the plugin package of
docs/plugins.md (``tests/plugin_pkg``, named by its policy ``demo_flow``) run with that package
installed: pip builds and installs it (offline) into a directory of its own once per session,
which such a chain finds on ``sys.path`` with its entry points, and which is forgotten
(registrations and modules too) after the chain.

The pages also must not point outside the repository, every ``--flag`` they give an
``envactor`` command must exist in that command's parser, the README starts with its two
commands, and the limits and defaults the pages state are the code's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONTINUES = "# continues the block above"
RUN_TAG, NORUN_TAG = "python", "python-norun"
PYTHONISH = re.compile(r"^(py|python|python3|pycon|ipython)\b", re.I)
DEMO_CKPT = "runs/demo/policy"
FIXTURES = "tests/fixtures/lerobot"  # real LeRobot artifacts shipped with the repository
PLUGIN_PKG = ROOT / "tests" / "plugin_pkg"  # the third-party package docs/plugins.md shows
PLUGIN_NAMES = ("demo_flow", "envactor_plugin_demo")  # a chain naming one uses the package


@dataclass
class Block:
    """One fenced code block: its info string, the line its code starts on, its code."""

    page: Path
    tag: str
    line: int
    code: str


@dataclass
class Chain:
    """A standalone ```python block and the blocks that continue it, run in one namespace."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        first = self.blocks[0]
        return f"{first.page.relative_to(ROOT)}:{first.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block (```` ``` ```` or ``~~~``) of a Markdown page, in order."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        fence, tag = opening.group(2), opening.group(3).strip()
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page.name}: unclosed code fence opened with {fence}{tag}")
        start = i - len(body) + 1  # 1-based line of the first code line
        blocks.append(Block(page, tag, start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def chains(page: Path) -> list[Chain]:
    """The page's ```python blocks grouped into chains (see the module docstring)."""
    out: list[Chain] = []
    for block in fenced_blocks(page):
        if block.tag != RUN_TAG:
            continue
        if block.code.lstrip().startswith(CONTINUES):
            if not out:
                raise AssertionError(
                    f"{page.name}:{block.line}: block says {CONTINUES!r} but no ```python block "
                    "comes before it on this page"
                )
            out[-1].blocks.append(block)
        else:
            out.append(Chain([block]))
    return out


ALL_CHAINS = [c for page in PAGES for c in chains(page)]


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/plugins.md's package built and installed by pip into a directory of its own, once
    (from a copy, so no build files land in the repository; no index, no build isolation)."""
    root = tmp_path_factory.mktemp("plugin")
    src, site = root / "src", root / "site"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(PLUGIN_PKG, src, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    cmd = [*pip, "--no-build-isolation", "--target", str(site), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}"
    return site


@pytest.fixture
def plugin_installed(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugin package importable, with its entry points, for one chain; afterwards its
    registrations and modules are forgotten, as if it had never been installed."""
    from envactor import COMPONENT_REGISTRY, POLICY_REGISTRY

    monkeypatch.syspath_prepend(str(plugin_site))
    try:
        yield
    finally:
        POLICY_REGISTRY._items.pop("demo_flow", None)
        COMPONENT_REGISTRY._items.pop("demo_velocity", None)
        for name in [m for m in sys.modules if m.partition(".")[0] == "envactor_plugin_demo"]:
            del sys.modules[name]


def test_pages_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/chunking.md", "docs/architecture.md"} <= names
    # the README's first look is among the chains, so the demo stand-in is exercised
    assert any(c.id.startswith("README.md:") for c in ALL_CHAINS)


@pytest.mark.parametrize("chain", ALL_CHAINS, ids=[c.id for c in ALL_CHAINS])
def test_doc_example_runs(
    chain: Chain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    code = "".join(b.code for b in chain.blocks)
    if DEMO_CKPT in code:
        shutil.copytree(request.getfixturevalue("demo_checkpoint"), tmp_path / DEMO_CKPT)
    if FIXTURES in code:  # pages run from the repository root may name the shipped fixtures
        (tmp_path / FIXTURES).parent.mkdir(parents=True)
        (tmp_path / FIXTURES).symlink_to(ROOT / FIXTURES)
    if any(name in code for name in PLUGIN_NAMES):
        request.getfixturevalue("plugin_installed")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in chain.blocks:
        # leading newlines keep tracebacks pointing at the page's own line numbers
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(block.page), "exec"), namespace)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_fence_tags(page: Path) -> None:
    """Python is tagged ``python`` (run) or ``python-norun`` (compiled only), nothing else."""
    for block in fenced_blocks(page):
        where = f"{page.name}:{block.line}"
        if block.tag == NORUN_TAG:
            compile(block.code, where, "exec")
        elif block.tag != RUN_TAG:
            assert not PYTHONISH.match(block.tag), (
                f"{where}: fence tag {block.tag!r}; use {RUN_TAG!r} (run by this test) or "
                f"{NORUN_TAG!r} (not run: say why in the page)"
            )


def test_continuation_marker_only_first_line() -> None:
    """The marker is only meaningful as a block's first line; elsewhere it is a mistake."""
    for page in PAGES:
        for block in fenced_blocks(page):
            lines = block.code.strip().splitlines()
            assert CONTINUES not in lines[1:], f"{page.name}:{block.line}: marker not first"


FORBIDDEN = ("../shared", "REFERENCE.md", "DESIGN.md", "/work/", "/tmp/", "scratch")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_no_paths_outside_repository(page: Path) -> None:
    text = page.read_text()
    found = [w for w in FORBIDDEN if w in text]
    assert not found, f"{page.name} names files outside the repository: {found}"


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for opt in parser._option_string_actions if opt.startswith("--")}


def _subcommand_options() -> dict[str, set[str]]:
    from envactor.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: _long_options(p) for name, p in sub.choices.items()}


def _global_options() -> set[str]:
    """Options of ``envactor`` itself, given before the subcommand (``envactor --debug eval``)."""
    from envactor.cli import build_parser

    return _long_options(build_parser())


# `--flag`s the pages give to programs other than `envactor`, with the program that takes them.
OTHER_PROGRAMS = {
    "--params": "benchmarks/bench_broadcast.py",
    "--repeats": "benchmarks/bench_broadcast.py",
    "--frames": "benchmarks/bench_dataset.py",
    "--openpi-server": "benchmarks/bench_server.py",
    **dict.fromkeys(
        ["--bid-samples", "--delays", "--executors", "--grid", "--no-guard", "--pivot", "--task"],
        "benchmarks/sweep_rtc.py",
    ),
    "--weak": "benchmarks/bench_bid.py",
    "--situations": "benchmarks/conditioning_gap.py",
    "--samples": "benchmarks/conditioning_gap.py",
}
# `envactor [--global] SUB ...` in a code span, after .venv/bin/, or at the start of a (code) line
COMMAND = re.compile(
    r"(`|\.venv/bin/|^[ \t]*)envactor((?: --[a-z][a-z-]*)*) ([a-z][a-z-]*)((?:[^`\n]|\\\n)*)", re.M
)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_cli_flags_exist() -> None:
    """Each ``envactor [--global] SUB ... --flag`` names a flag of SUB (and global options of
    ``envactor`` itself); any other ``--flag`` exists in some command (or ``OTHER_PROGRAMS``)."""
    options = _subcommand_options()
    globals_ = _global_options()
    every = set().union(*options.values()) | globals_
    for flag, program in OTHER_PROGRAMS.items():
        assert f'"{flag}"' in (ROOT / program).read_text(), f"{program} has no {flag}"
    problems: list[str] = []
    for page in PAGES:
        text = page.read_text()
        for m in COMMAND.finditer(text):
            before, given, sub, rest = m.groups()
            if before == "`":  # a code span may wrap onto the next line
                rest = text[m.start(4) : text.find("`", m.start(4))]
            for flag in FLAG.findall(given):
                if flag not in globals_:
                    problems.append(f"{page.name}: 'envactor {flag}' is not an envactor option")
            if sub not in options:
                if before.strip():  # a code span or a path: it must be a real command
                    problems.append(f"{page.name}: unknown subcommand in 'envactor {sub}'")
                continue
            for flag in FLAG.findall(rest):
                if flag not in options[sub] | {"--help"}:
                    problems.append(f"{page.name}: 'envactor {sub}' has no {flag}")
        for flag in set(FLAG.findall(text)):
            if flag not in every and flag not in OTHER_PROGRAMS:
                problems.append(f"{page.name}: {flag} is not a flag of any envactor command")
    assert not problems, "\n".join(problems)


def test_readme_starts_with_the_two_commands() -> None:
    """The README's first code block is the set-up: ``make demo`` and ``make test``."""
    first = fenced_blocks(ROOT / "README.md")[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"], first.code


def _table_row(page: str, name: str) -> str:
    """The row of a Markdown table on ``page`` whose first cell starts with `` `name` ``."""
    text = (ROOT / "docs" / page).read_text()
    rows = [line for line in text.splitlines() if line.startswith(f"| `{name}`")]
    assert len(rows) == 1, f"{page}: expected one table row for {name!r}, found {len(rows)}"
    return rows[0]


def test_documented_config_limits_are_the_codes() -> None:
    from envactor.config import limits

    text = (ROOT / "docs" / "configs.md").read_text()
    stated = [
        f"| one file | {limits.MAX_FILE_BYTES >> 10} KiB |",
        f"{limits.MAX_TOTAL_BYTES >> 10} KiB together, {limits.MAX_FILES} files",
        f"{limits.MAX_NODES:,} per file",
        f"{limits.MAX_DEPTH} levels",
        f"| {limits.MAX_STRING_CHARS:,} characters |",
        f"{limits.MAX_RESOLVED:,} values and {limits.MAX_RESOLVED_CHARS:,} characters",
        f"| {limits.MAX_REF_CHAIN} |",
    ]
    missing = [s for s in stated if s not in text]
    assert not missing, f"docs/configs.md does not state the code's limits: {missing}"


def test_documented_health_limits_are_the_codes() -> None:
    from envactor.runtime.realtime.cli import LIMIT_FLAGS
    from envactor.runtime.realtime.health import LIMIT_STOPS, HealthLimits

    d = HealthLimits()
    held, chunks, deadlines = LIMIT_STOPS  # the stop reason of each limit, in field order
    rows = {
        "max_held_fraction": [
            f"{d.held_limit('rtc'):g}, or {d.held_limit('sync'):g} for `sync`",
            f"`{held}`",
        ],
        "max_missed_chunks": [
            f"more than {d.max_missed_chunks} within {d.missed_chunk_window_s:g} s",
            f"`{chunks}`",
            "`--missed-chunk-window`",
        ],
        "max_missed_deadline_fraction": [
            f"| {d.max_missed_deadline_fraction:g} |",
            f"`{deadlines}`",
        ],
        "grace_s": [f"| {d.grace_s:.1f} |", "`--limit-grace`"],
    }
    for name, expected in rows.items():
        row = _table_row("realtime.md", name)
        if name in LIMIT_FLAGS:
            expected.append(f"`{LIMIT_FLAGS[name]}`")
        for text in expected:
            assert text in row, f"docs/realtime.md, row {name}: {text!r} not in {row!r}"


def test_documented_stats_sketch_size_is_the_codes() -> None:
    import inspect

    from envactor.streaming_stats import StatsAccumulator

    size = inspect.signature(StatsAccumulator).parameters["sketch_size"].default
    stated = {"checkpoints.md": f"fewer than {size} frames", "training.md": f"below {size} frames"}
    for page, text in stated.items():
        assert text in (ROOT / "docs" / page).read_text(), f"docs/{page}: {text!r} not found"
