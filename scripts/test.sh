#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh --test) and runs the whole test suite, the real-engine tests
# included. Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/codeserve prepare
.venv/bin/ruff check server tests loadtests deploy scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
