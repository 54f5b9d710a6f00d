#!/usr/bin/env bash
# Runs code-review-graph and codegraph side by side on the same copies of requests,
# SQLAlchemy and tokio: full build, incremental update after one changed file, and (for
# codegraph) index load and queries. Wall time and peak RSS of code-review-graph come from
# /usr/bin/time -v; codegraph's from the bench binary (one child process per measurement).
# Usage: codegraph/bench/run.sh [RUNS]   (inputs: codegraph/bench/prepare.sh)
set -uo pipefail
RUNS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${CODEGRAPH_BENCH_DIR:-$HOME/.cache/backporcher/codegraph-bench}
"$HERE/prepare.sh" "$WORK" >/dev/null
CRG="$WORK/venv/bin/code-review-graph"
REPOS=("requests:src/requests/sessions.py" "tokio:src/sync/mutex.rs" "sqlalchemy:lib/sqlalchemy/orm/session.py")

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# prints "wall_seconds max_rss_kib" of a command
timed() {
  /usr/bin/time -v "$@" >/dev/null 2>"$WORK/time.log"
  local wall rss
  wall=$(grep -a "Elapsed (wall clock)" "$WORK/time.log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep -a "Maximum resident set size" "$WORK/time.log" | awk '{print $NF}')
  echo "$wall $rss"
}

echo "| repository | tool | full build (median wall / peak RSS) | incremental, one file changed |"
echo "|---|---|---|---|"
BENCH_ARGS=()
for spec in "${REPOS[@]}"; do
  name=${spec%%:*}; file=${spec#*:}
  crg_dir="$WORK/work/crg-$name"; cg_dir="$WORK/work/cg-$name"
  rm -rf "$crg_dir" "$cg_dir"; mkdir -p "$WORK/work"
  cp -r "$WORK/src/$name" "$crg_dir"; cp -r "$WORK/src/$name" "$cg_dir"
  (cd "$crg_dir" && git init -q && git add -A && git -c user.email=bench@localhost -c user.name=bench commit -qm base)
  builds=(); updates=()
  for i in $(seq "$RUNS"); do
    rm -rf "$crg_dir/.code-review-graph"
    builds+=("$(cd "$crg_dir" && timed "$CRG" build -q --repo .)")
  done
  cp "$crg_dir/$file" "$WORK/orig.tmp"
  for i in $(seq "$RUNS"); do
    printf '\n# bench edit %s\n' "$i" >> "$crg_dir/$file"
    updates+=("$(cd "$crg_dir" && timed "$CRG" update -q --repo .)")
    cp "$WORK/orig.tmp" "$crg_dir/$file"
    (cd "$crg_dir" && "$CRG" update -q --repo . >/dev/null 2>&1 || true)
  done
  bw=$(printf '%s\n' "${builds[@]}" | awk '{print $1}' | median); br=$(printf '%s\n' "${builds[@]}" | awk '{print $2}' | median)
  uw=$(printf '%s\n' "${updates[@]}" | awk '{print $1}' | median); ur=$(printf '%s\n' "${updates[@]}" | awk '{print $2}' | median)
  printf '| %s | code-review-graph 2.3.9 | %.2f s / %.0f MiB | %.2f s / %.0f MiB |\n' "$name" "$bw" "$(echo "$br/1024" | bc -l)" "$uw" "$(echo "$ur/1024" | bc -l)"
  BENCH_ARGS+=("$name=$cg_dir:$file")
done
echo
[ "${CRG_ONLY:-0}" = 1 ] && exit 0
cd "$ROOT"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/backporcher/target-codegraph} \
  cargo bench -q -p codegraph --bench compare -- --runs "$RUNS" "${BENCH_ARGS[@]}"
