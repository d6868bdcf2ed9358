#!/usr/bin/env bash
# Create .venv (once) and install Reach with its dev extras into it.
#
# torch comes first, at the version pyproject.toml pins. On a machine without a working NVIDIA GPU: the CPU build
# from PyTorch's CPU wheel index (about 200 MB, not the CUDA build's 2-3 GB of libraries), or, if that index cannot
# be reached, the pinned version from the default index (what pip's settings give: PyPI's CUDA build, or a CPU
# wheel where one is on disk). With a GPU: the default (CUDA) build. Once the pinned version is there nothing is
# reinstalled, so a second run takes seconds. REACH_TORCH_INDEX overrides the CPU index's address.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0   # the pin in pyproject.toml
CPU_INDEX=${REACH_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip_install() {
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
}
torch_build() {  # "<version> <CUDA version or None>"; nothing when torch is not installed
    .venv/bin/python -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null || true
}
build=$(torch_build)
case "$build" in
    "$TORCH_VERSION "* | "$TORCH_VERSION+"*) pinned=yes ;;
    *) pinned=no ;;
esac
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    if [ "$pinned" = yes ] && [ "${build##* }" = None ]; then
        .venv/bin/python -m pip uninstall --quiet --yes torch   # a CPU build on a GPU machine
        pinned=no
    fi
    [ "$pinned" = yes ] || pip_install "torch==$TORCH_VERSION"
elif [ "$pinned" = no ]; then
    # --retries 0 and a short --timeout: an index out of reach fails in seconds, not after minutes of retries.
    if ! pip_install --timeout 15 --retries 0 --index-url "$CPU_INDEX" "torch==$TORCH_VERSION"; then
        echo "setup: PyTorch's CPU index $CPU_INDEX could not be used; torch $TORCH_VERSION from the default index instead" >&2
        pip_install "torch==$TORCH_VERSION"
    fi
fi
build=$(torch_build)
case "$build" in
    "$TORCH_VERSION "* | "$TORCH_VERSION+"*) echo "setup: torch ${build% *} (CUDA ${build##* })" ;;
    *) echo "setup: torch $TORCH_VERSION is not installed (found: ${build:-none})" >&2; exit 1 ;;
esac
pip_install -e '.[dev]'
