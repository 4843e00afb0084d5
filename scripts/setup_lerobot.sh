#!/usr/bin/env bash
# Set up .venv-lerobot: envactor beside LeRobot 0.4.4, for the LeRobot interoperability tests
# (tests/with_lerobot/). Safe to run again (skips work already done).
#
# LeRobot 0.4.x pins torch<2.11, while the torch that matches a working CPU-side torchvision here
# is 2.14.1 (torchvision 0.29.1; the torchvision built for the 2.13.0 CPU wheel needs CUDA
# libraries). So LeRobot is installed without its own pins (--no-deps) on top of torch 2.14.1,
# torchvision 0.29.1 and torchcodec 0.14.0 (LeRobot's video backend; torchvision 0.29 no longer
# has the VideoReader its PyAV backend used), with the versions below, all tested together.
# torchcodec loads the system's FFmpeg libraries: `apt-get install ffmpeg` (done here when run as
# root and missing). The torch 2.14.1 wheel is a CUDA build (about 5.5 GB in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${ENVACTOR_PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=.venv-lerobot
TORCH="torch==2.14.1 torchvision==0.29.1 torchcodec==0.14.0"
DEPS="lerobot==0.4.4"
PINNED="numpy==2.4.6 draccus==0.10.0 huggingface_hub==2.4.0 safetensors==0.8.0 datasets==5.2.0
  pillow==13.0.0 einops==0.8.2 accelerate==1.15.0 imageio==2.38.1 diffusers==0.42.1
  pyserial==3.5 deepdiff==9.1.0 av==18.1.0 gymnasium==1.4.0 jsonlines termcolor gym-pusht==0.1.8"
# The official openpi websocket client, for the serving test. Without its pins: it declares
# numpy<2 (its client code runs on numpy 2) and dm-tree (used only by its runtime helpers).
NODEPS="openpi-client==0.1.2"
if ! ldconfig -p | grep -q libavcodec; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq ffmpeg) >/dev/null
  else
    echo "setup_lerobot: LeRobot's video decoder needs FFmpeg's libraries: apt-get install ffmpeg" >&2
    exit 1
  fi
fi
if [ ! -x $VENV/bin/python ]; then
  "$PY" -m venv $VENV
fi
stamp=$VENV/.envactor-setup
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# shellcheck disable=SC2086
$VENV/bin/pip install --quiet $TORCH
$VENV/bin/pip install --quiet --no-deps $DEPS
# shellcheck disable=SC2086
$VENV/bin/pip install --quiet $PINNED
$VENV/bin/pip install --quiet --no-deps $NODEPS
$VENV/bin/pip install --quiet -e ".[data,serve,plot,dev]"
echo "$want" > "$stamp"
