#!/usr/bin/env bash
# The benchmark report: every benchmark against its peer in the same run, written as
# bench/results.md (a Markdown table) and bench/ratios.svg (a chart), from bench/results.jsonl.
#   bash bench/report.sh
# Needs the Python environment of .ci/run (DuckDB and deltalake are the batch peer).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PYENV="${LAMBDAFLOW_PYENV:-$HOME/.cache/lambdaflow-pyenv}"
export LAMBDAFLOW_PYTHON="${LAMBDAFLOW_PYTHON:-$PYENV/bin/python}"
export LAMBDAFLOW_BENCH_RESULTS="$PWD/bench/results.jsonl"
rm -f "$LAMBDAFLOW_BENCH_RESULTS"

cargo bench -p lambdaflow-batch --bench archive
cargo bench -p lambdaflow-batch --bench recompute
cargo bench -p lambdaflow-batch --bench import
cargo bench -p lambdaflow-serving --bench speed

"$LAMBDAFLOW_PYTHON" bench/report.py "$LAMBDAFLOW_BENCH_RESULTS" bench/results.md bench/ratios.svg
cat bench/results.md
