#!/usr/bin/env bash
# User-space instructions per durable PATCH, counted by callgrind: a
# deterministic A/B measure for a box whose speed drifts by ±15% within
# minutes (req/s cannot show a 3% change there; instruction counts can).
#
#   bench/instructions.sh [BINARY...]      default: target/release/countiq
#   DURATION=6 CONNS=16 bench/instructions.sh old/countiq new/countiq
#
# Per binary: start `countiq serve --fsync always` under
# `valgrind --tool=callgrind --instr-atstart=no` on a fresh data dir, create
# one item, warm up for 2 s, switch instrumentation on, run
# `wrk -t1 -c$CONNS -d${DURATION}s -s bench/patch.lua` on that item, switch
# it off, stop the server. Prints the requests wrk completed, the
# instructions counted (every thread of the server: workers, WAL writer,
# actors) and their quotient. Kernel work (syscalls, TCP, fsync) is not
# counted: it is what `bench/run.sh` measures. The profile is kept in
# bench/out/callgrind.<n>.out for `callgrind_annotate --inclusive=yes`.
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-6}"
CONNS="${CONNS:-16}"
command -v valgrind >/dev/null || { echo "valgrind not found: run bench/setup.sh" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found: run bench/setup.sh" >&2; exit 1; }
if (($# == 0)); then
  (cd "$REPO_DIR" && cargo build --release --quiet)
  set -- "$REPO_DIR/target/release/countiq"
fi
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d /tmp/countiq-instructions.XXXXXX)"
trap 'kill_started; rm -rf "$WORK"' EXIT
export COUNTIQ_JWT_SECRET="instructions-secret-instructions-secret"

n=0
for bin in "$@"; do
  n=$((n + 1))
  port="$(free_port)"
  out="$OUT_DIR/callgrind.$n.out"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" serve --addr "127.0.0.1:$port" --data-dir "$WORK/data.$n" --fsync always \
    >"$WORK/server.$n.log" 2>&1 &
  pid=$!
  STARTED_PIDS+=("$pid")
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
    sleep 0.2
  done
  token="$(mint_jwt bench-instructions "$COUNTIQ_JWT_SECRET")"
  id="$(curl -fsS -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"name":"hot","qty":1000000000}' "http://127.0.0.1:$port/items" | jq -r .id)"
  url="http://127.0.0.1:$port/items/$id/qty"
  BENCH_TOKEN="$token" wrk -t1 -c"$CONNS" -d2s -s "$BENCH_DIR/patch.lua" "$url" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  result="$(BENCH_TOKEN="$token" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$BENCH_DIR/patch.lua" "$url" | grep WRKRESULT)"
  callgrind_control -i off "$pid" >/dev/null
  stop_pid "$pid"
  requests="$(grep -o 'requests=[0-9]*' <<<"$result" | cut -d= -f2)"
  non2xx="$(grep -o 'non2xx=[0-9]*' <<<"$result" | cut -d= -f2)"
  instructions="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
  if [[ -z "$requests" || "$requests" == 0 || "$non2xx" != 0 || -z "$instructions" ]]; then
    echo "$bin: no clean run (requests=$requests non2xx=$non2xx); see $WORK/server.$n.log" >&2
    exit 1
  fi
  printf '%s\trequests=%s\tinstructions=%s\tper_request=%s\tprofile=%s\n' \
    "$bin" "$requests" "$instructions" "$((instructions / requests))" "$out"
done
