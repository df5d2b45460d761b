# Helpers for bench/run.sh. Source it; do not run it.
# Adapted from the peer study's helpers (bench/PEERS.md): same knobs, same
# kill-by-PID discipline.
# shellcheck shell=bash
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by run.sh
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# Raw outputs of the latest run (git-ignored).
OUT_DIR="${OUT_DIR:-$BENCH_DIR/out}"
SUMMARY="$OUT_DIR/summary.tsv"

DURATION="${DURATION:-10}"   # seconds per load run
# Concurrent connections / clients: every stage runs each count of
# CONNS_LIST ("1 4 16 64"), one row per count; CONNS=N overrides the list
# with one count. CONNS is then the count being run (the loops set it).
if [[ -n "${CONNS:-}" ]]; then CONNS_LIST="$CONNS"; fi
CONNS_LIST="${CONNS_LIST:-1 4 16 64}"
for _c in $CONNS_LIST; do
  [[ "$_c" =~ ^[1-9][0-9]*$ && "$_c" -le 4096 ]] \
    || { printf 'CONNS_LIST: %q is not a connection count in [1, 4096]\n' "$_c" >&2; exit 2; }
done
[[ -n "${CONNS_LIST// /}" ]] || { echo "CONNS_LIST is empty" >&2; exit 2; }
CONNS="${CONNS_LIST%% *}"
RUNS="${RUNS:-3}"            # repetitions per configuration; medians reported
# Every run is also cut by `timeout` at DURATION + this many seconds.
RUN_GRACE_S=30

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# mint_jwt OWNER SECRET : HS256 token, sub=OWNER, valid 1 h (key = raw bytes).
mint_jwt() {
  local owner="$1" secret="$2" now h p s
  now="$(date +%s)"
  h="$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)"
  p="$(printf '{"sub":"%s","iat":%d,"exp":%d}' "$owner" "$now" "$((now + 3600))" | b64url)"
  s="$(printf '%s' "$h.$p" | openssl dgst -sha256 -hmac "$secret" -binary | b64url)"
  printf '%s.%s.%s\n' "$h" "$p" "$s"
}

# Median of the arguments (upper median for an even count); NA when none.
median() {
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g \
    | awk '{a[NR]=$1} END { if (NR==0) {print "NA"} else {print a[int((NR+1)/2)]} }'
}

# PIDs we started; only these are ever killed (TERM, then KILL after 5 s).
STARTED_PIDS=()
kill_started() {
  local pid
  for pid in "${STARTED_PIDS[@]:-}"; do
    [[ -n "$pid" ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  STARTED_PIDS=()
}

# stop_pid PID : stop one server we started, and wait for it to exit.
stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# Wait until a TCP port on 127.0.0.1 accepts connections.
wait_port() {
  local port="$1" tries="${2:-100}"
  for _ in $(seq 1 "$tries"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "port $port did not open"; return 1
}

# A free loopback TCP port: probe from a random start, skipping ports in use.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  log "no free port found"; return 1
}

# This box is a VM on a shared host: other guests take CPU time from it
# ("steal") and change every rate, and a durable server that sleeps on the
# disk suffers from it more than a CPU-bound one. So each load run states
# how much of its CPU time the host took.
# cpu_mark : "total idle+iowait steal" jiffies so far, from /proc/stat.
cpu_mark() {
  # cpu user nice system idle iowait irq softirq steal (guest is in user)
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6, $9; exit }' /proc/stat
}
# cpu_since MARK : "steal% idle%" of all CPU time since MARK (cpu_mark).
cpu_since() {
  local t0 i0 s0
  read -r t0 i0 s0 <<<"$1"
  cpu_mark | awk -v t0="$t0" -v i0="$i0" -v s0="$s0" \
    '{ dt = $1 - t0; if (dt <= 0) { print "NA NA"; exit } printf "%.0f %.0f\n", 100 * ($3 - s0) / dt, 100 * ($2 - i0) / dt }'
}
# with_steal CMD... : "STEAL% IDLE% " and then CMD's one-line output: how
# much of the box's CPU time the host took (and how much was idle) while
# CMD ran. The share comes first so that an empty output shifts nothing.
with_steal() {
  local mark out
  mark="$(cpu_mark)"
  out="$("$@")" || true   # a failed run prints what it has (NA), as before
  printf '%s %s\n' "$(cpu_since "$mark")" "$out"
}

# Load-tool threads: at most one per connection (wrk refuses -t > -c;
# pgbench -j must not exceed -c), at most 2 (the box has 2 vCPUs).
tool_threads() { if ((CONNS < 2)); then echo "$CONNS"; else echo 2; fi; }

# record SYSTEM CONFIG TOOL DURABLE CONNS RPS P50_MS P99_MS RUNS_RPS NOTE
record() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$SUMMARY"; }

# wrk_once LABEL URL -> "rps p50_ms p99_ms non2xx+sockerr", or "NA NA NA NA"
# when wrk gave no result line. One wrk run (patch.lua, BENCH_TOKEN, CONNS
# connections, tool_threads threads);
# raw output appended to $OUT_DIR/wrk-LABEL-cCONNS.txt.
wrk_once() {
  local line
  line="$(timeout $((DURATION + RUN_GRACE_S)) wrk -t"$(tool_threads)" -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency \
            -s "$BENCH_DIR/patch.lua" "$2" 2>&1 | tee -a "$OUT_DIR/wrk-$1-c$CONNS.txt" | grep '^WRKRESULT' || true)"
  [[ -n "$line" ]] || { echo "NA NA NA NA"; return; }
  sed -E 's/.* rps=([0-9.]+).* p50_ms=([0-9.]+) p99_ms=([0-9.]+).* non2xx=([0-9]+) errors=([0-9]+).*/\1 \2 \3 \4+\5/' <<<"$line"
}

# wrk_series LABEL URL SYSTEM CONFIG DURABLE : records one row (for CONNS)
# from RUNS wrk runs.
wrk_series() {
  local label="$1" url="$2" system="$3" config="$4" durable="$5" r st idle x p5 p9 b
  local rps=() p50=() p99=() bad=() steal=()
  for r in $(seq 1 "$RUNS"); do
    read -r st idle x p5 p9 b <<<"$(with_steal wrk_once "$label" "$url")"
    log "$label c=$CONNS run$r: rps=$x p50=${p5}ms p99=${p9}ms non2xx+sockerr=$b host steal ${st}% idle ${idle}%"
    [[ "$x" != NA ]] || continue
    rps+=("$x"); p50+=("$p5"); p99+=("$p9"); bad+=("$b"); steal+=("$st")
  done
  record "$system" "$config" "wrk -t$(tool_threads)" "$durable" "$CONNS" "$(median "${rps[@]:-}")" "$(median "${p50[@]:-}")" \
    "$(median "${p99[@]:-}")" "${rps[*]:-}" "non2xx+sockerr ${bad[*]:-}; host steal % ${steal[*]:-}"
}

# PostgreSQL server binaries: /usr/local/bin (peers' layout) or Debian's.
pg_bin_dir() {
  if [[ -x /usr/local/bin/postgres && -x /usr/local/bin/initdb ]]; then echo /usr/local/bin; return; fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/postgres" ]] && { echo "$d"; return; }
  done
  return 1
}

# Run a command as the postgres OS user when we are root (initdb refuses root).
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
