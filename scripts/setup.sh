#!/usr/bin/env bash
# Set up .venv from the project's own files; safe to run again (skips work already done).
#   ENVACTOR_PYTHON  interpreter to build the venv with (default: python3.11, else python3)
#   ENVACTOR_TORCH   pip requirement for torch (default: torch==2.13.0, the CPU wheel this
#                    machine has on disk). A GPU user either sets ENVACTOR_TORCH to a CUDA build,
#                    or installs one into .venv first: an installed torch that satisfies the
#                    package's range is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${ENVACTOR_PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH=${ENVACTOR_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.envactor-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet "$TORCH"
fi
.venv/bin/pip install --quiet -e ".[all,dev]"
# openpi's official client, for the tests that talk to the server with it: without its
# dependencies (its numpy<2 pin conflicts; it imports only msgpack, numpy and websockets)
.venv/bin/pip install --quiet --no-deps openpi-client==0.1.2
echo "$want" > "$stamp"
