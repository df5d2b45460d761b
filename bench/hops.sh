#!/usr/bin/env bash
# Where one durable request's time goes at low concurrency (issue 19).
#
#   bench/hops.sh BIN [BIN ...]
#
# For each connection count in CONNS_LIST, ROUNDS times, each BIN in turn
# (interleaved, so drift hits every binary alike): start `BIN serve --fsync
# $FSYNC` on a fresh data dir, run `BIN load --scenario hot-owner` closed
# loop for DURATION seconds, and over that run take from the server:
#   - its context switches per request, by thread kind (`perf stat
#     --per-thread -e context-switches`): every hop to another thread is a
#     wake-up, i.e. a switch on each side;
#   - its mean fdatasync time and records per batch (from /metrics), and the
#     share of batches written by a leading actor (when the binary has
#     `countiq_wal_batches_led_total`);
#   - p50/p99 from the load generator.
# Prints one markdown table of medians over the rounds (raw lines in
# bench/out/hops.tsv). Knobs: CONNS_LIST ("1 2 4 8"), DURATION (5), ROUNDS
# (3), FSYNC (always). Every server listens on 127.0.0.1 only and is stopped
# by PID; every load run is cut by `timeout`.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CONNS_LIST="${CONNS_LIST:-1 2 4 8}"
DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
FSYNC="${FSYNC:-always}"
(($# >= 1)) || { echo "usage: bench/hops.sh BIN [BIN ...]" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not found (Debian: linux-perf)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found (bench/setup.sh)" >&2; exit 1; }

mkdir -p "$OUT_DIR"
RAW="$OUT_DIR/hops.tsv"
: >"$RAW"
WORK="$(mktemp -d /tmp/countiq-hops.XXXXXX)"
trap 'kill_started; rm -rf "$WORK"' EXIT
COUNTIQ_JWT_SECRET="$(openssl rand -hex 32)"
export COUNTIQ_JWT_SECRET

# metric NAME FILE : the sum of NAME's samples in a /metrics scrape (0 if absent).
metric() {
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.9f\n", s + 0 }' "$2"
}

# delta NAME BEFORE AFTER : how much NAME grew between two scrapes.
delta() {
  awk -v a="$(metric "$1" "$3")" -v b="$(metric "$1" "$2")" 'BEGIN { print a - b }'
}

# one BIN CONNS ROUND : one server, one load run; appends a line to $RAW.
one() {
  local bin="$1" conns="$2" round="$3" port pid dir json before after perfout
  port="$(free_port)"
  dir="$WORK/d-$round-$conns-$(basename "$bin")"
  "$bin" serve --addr "127.0.0.1:$port" --data-dir "$dir" --fsync "$FSYNC" >"$dir.log" 2>&1 &
  pid=$!
  STARTED_PIDS+=("$pid")
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
    sleep 0.1
  done
  before="$WORK/before.prom"; after="$WORK/after.prom"; perfout="$WORK/perf.txt"
  json="$WORK/load.json"
  curl -fsS "http://127.0.0.1:$port/metrics" >"$before"
  # perf counts from now until the load ends (it is killed with the load's end).
  perf stat --per-thread -e context-switches -p "$pid" -o "$perfout" &
  local perf_pid=$!
  timeout $((DURATION + RUN_GRACE_S)) "$bin" load --url "http://127.0.0.1:$port" --scenario hot-owner \
    --connections "$conns" --duration "${DURATION}s" --json >"$json" 2>"$WORK/load.err" || true
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  curl -fsS "http://127.0.0.1:$port/metrics" >"$after"
  stop_pid "$pid"
  local req rps p50 p99 fsync_s fsync_n records batches led workers wal
  req="$(jq -r '.replies' "$json")"
  rps="$(jq -r '.requests_per_s' "$json")"
  p50="$(jq -r '.latency_us.p50' "$json")"
  p99="$(jq -r '.latency_us.p99' "$json")"
  fsync_s="$(delta countiq_wal_fsync_seconds_sum "$before" "$after")"
  fsync_n="$(delta countiq_wal_fsync_seconds_count "$before" "$after")"
  records="$(delta countiq_wal_records_total "$before" "$after")"
  batches="$(delta countiq_wal_batch_records_count "$before" "$after")"
  led="$(delta countiq_wal_batches_led_total "$before" "$after")"
  # perf --per-thread lines: "<comm>-<tid>  <count>  context-switches".
  workers="$(awk '/context-switches/ && $1 ~ /^tokio-(runtime-w|rt-worker)/ { gsub(",", "", $2); s += $2 } END { print s + 0 }' "$perfout")"
  wal="$(awk '/context-switches/ && $1 ~ /^countiq-wal-[0-9]+$/ { gsub(",", "", $2); s += $2 } END { print s + 0 }' "$perfout")"
  awk -v bin="$bin" -v c="$conns" -v r="$round" -v req="$req" \
      -v rps="$rps" -v p50="$p50" -v p99="$p99" -v fs="$fsync_s" -v fn="$fsync_n" -v rec="$records" \
      -v bat="$batches" -v led="$led" -v w="$workers" -v wal="$wal" 'BEGIN {
    OFS = "\t"
    print bin, c, r, rps, p50, p99, (fn > 0 ? fs / fn * 1e6 : 0), (bat > 0 ? rec / bat : 0),
          (bat > 0 ? led / bat : 0), (req > 0 ? w / req : 0), (req > 0 ? wal / req : 0)
  }' >>"$RAW"
  log "$(tail -1 "$RAW")"
}

for conns in $CONNS_LIST; do
  for round in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do one "$bin" "$conns" "$round"; done
  done
done

echo "fsync=$FSYNC, ${DURATION}s per run, $ROUNDS interleaved rounds, medians; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| binary | conns | req/s | p50 µs | p99 µs | fdatasync mean µs | records/batch | led batches | switches/req (workers) | switches/req (WAL thread) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
cut -f1,2 "$RAW" | sort -u -k2,2n -k1,1 | while IFS=$'\t' read -r bin conns; do
  row="| $bin | $conns"
  for col in 4 5 6 7 8 9 10 11; do
    v="$(awk -F'\t' -v b="$bin" -v c="$conns" -v k="$col" '$1 == b && $2 == c { print $k }' "$RAW")"
    # shellcheck disable=SC2086  # one value per line
    m="$(median $v)"
    case "$col" in 4|5|6|7) m="$(printf '%.0f' "$m")" ;; 9) m="$(awk -v x="$m" 'BEGIN { printf "%.0f%%", x * 100 }')" ;; *) m="$(printf '%.2f' "$m")" ;; esac
    row="$row | $m"
  done
  echo "$row |"
done
