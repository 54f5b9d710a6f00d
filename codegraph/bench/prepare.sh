#!/usr/bin/env bash
# Prepares the benchmark inputs for `cargo bench -p codegraph --bench compare` and the
# code-review-graph comparison: the requests and SQLAlchemy sdists (PyPI), the tokio crate
# source (crates.io, through cargo's registry cache), and a venv with code-review-graph.
# Nothing downloaded here is committed. Usage: codegraph/bench/prepare.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-${CODEGRAPH_BENCH_DIR:-$HOME/.cache/backporcher/codegraph-bench}}
mkdir -p "$WORK/src" "$WORK/dl"
cd "$WORK"

if ! [ -x /usr/bin/time ]; then
  apt-get update -qq && apt-get install -y -qq time
fi

if ! [ -x venv/bin/code-review-graph ]; then
  python3 -m venv venv
  venv/bin/pip install -q 'code-review-graph==2.3.9' 'tree-sitter-language-pack==0.13.0'
fi

if ! [ -d src/requests ]; then
  venv/bin/pip download -q --no-binary :all: --no-deps -d dl requests
  tar -xzf dl/requests-*.tar.gz -C src && mv src/requests-* src/requests
fi
if ! [ -d src/sqlalchemy ]; then
  venv/bin/pip download -q --no-binary :all: --no-deps -d dl SQLAlchemy
  tar -xzf dl/[sS][qQ][lL][aA]lchemy-*.tar.gz -C src && mv src/[sS][qQ][lL][aA]lchemy-* src/sqlalchemy
fi
if ! [ -d src/tokio ]; then
  TOKIO=$(ls -d "$HOME"/.cargo/registry/src/*/tokio-1.* 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$TOKIO" ]; then
    cp -r "$TOKIO" src/tokio
  else
    curl -sSfL -o dl/tokio.crate https://static.crates.io/crates/tokio/tokio-1.54.1.crate
    tar -xzf dl/tokio.crate -C src && mv src/tokio-1.* src/tokio
  fi
fi
# the sources are read-only inputs: keep pristine copies, tools work on their own copies
echo "inputs ready in $WORK/src: $(ls "$WORK/src" | tr '\n' ' ')"
