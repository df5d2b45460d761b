#!/usr/bin/env bash
# Side-by-side benchmark: the same hot-owner workload (one item/row/key, a
# random delta in [-1, 1], never below zero, CONNS concurrent clients, for
# each CONNS of CONNS_LIST) against
#   1. CountIQ   `countiq serve --fsync always|never`, driven by `countiq load`
#                (with its correctness check) and, for fsync=always, by wrk;
#   2. PostgreSQL pgbench hot-row guarded UPDATE, synchronous_commit on|off;
#   3. Redis     Lua-guarded delta (EVALSHA), appendfsync always|everysec;
#   4. axum      the stateless HTTP ceiling, driven by wrk;
#   5. interleaved: CountIQ always and never, Redis always and no, axum (and,
#                with BASELINE_REV, that revision's CountIQ always and never)
#                started together and run round-robin, per round and per
#                connection count, ROUNDS times, for drift-free ratios; with
#                `countiq wal fsync-probe` at its start and end; the issue 19
#                goals are computed from its rounds.
# Prints one markdown table and the goals (also bench/out/table.md); raw
# output in bench/out/.
#
# Knobs (environment): DURATION s per run (10), CONNS_LIST ("1 4 16 64"),
# CONNS (one count, overrides CONNS_LIST), RUNS per configuration (3,
# medians reported), ROUNDS of the interleaved stage (5), STAGES ("countiq
# postgres redis axum interleaved"), PG_ROWS (100000), AXUM_BUILD_DIR
# (/tmp/countiq-bench-axum-ceiling), BASELINE_REV (a git revision: built in
# BASELINE_BUILD_DIR/<commit>, default /tmp/countiq-bench-baseline, and
# added to the interleaved rounds), PROBE_COUNT (2000 fdatasyncs per probe),
# RAMFS_DIR (/dev/shm: a tmpfs for the interleaved stage's "log on tmpfs"
# bound; empty or not a tmpfs: that system is left out).
# Every server is started here on 127.0.0.1 only, in a fresh temp dir, and
# stopped at exit (by PID); every load run is bounded by -d/-T/-n + timeout.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

STAGES="${STAGES:-countiq postgres redis axum interleaved}"
PG_ROWS="${PG_ROWS:-100000}"
AXUM_BUILD_DIR="${AXUM_BUILD_DIR:-/tmp/countiq-bench-axum-ceiling}"
BASELINE_REV="${BASELINE_REV:-}"
BASELINE_BUILD_DIR="${BASELINE_BUILD_DIR:-/tmp/countiq-bench-baseline}"
PROBE_COUNT="${PROBE_COUNT:-2000}"
RAMFS_DIR="${RAMFS_DIR-/dev/shm}"
CLK_TCK="$(getconf CLK_TCK)"
IL_TSV="$OUT_DIR/interleaved.tsv"   # round conns system rps p50_ms p99_ms bad steal user_us sys_us
PROBE_TSV="$OUT_DIR/fsync-probe.tsv" # when p50_us p99_us max_us
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
START_QTY=1000000000   # like the peers: deltas in [-1, 1] never reach 0
READY_TRIES=300        # x 0.1 s: how long a server may take to become ready

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.txt "$OUT_DIR"/*.json "$OUT_DIR"/*.csv "$OUT_DIR"/*.log "$OUT_DIR"/*.tsv "$SUMMARY"
WORK="$(mktemp -d /tmp/countiq-bench.XXXXXX)"
chmod 755 "$WORK"   # the postgres user must reach its data dir below
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- CountIQ --

wait_ready() {
  local port="$1"
  for _ in $(seq 1 "$READY_TRIES"); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  log "server on port $port never became ready"; return 1
}

countiq_pending() {
  local why="$1"
  for CONNS in $CONNS_LIST; do
    record CountIQ "fsync=always" "countiq load" yes "$CONNS" pending NA NA "" "$why"
    record CountIQ "fsync=always" "wrk -t$(tool_threads)" yes "$CONNS" pending NA NA "" "$why"
    record CountIQ "fsync=never" "countiq load" no "$CONNS" pending NA NA "" "$why"
  done
}

# countiq_load_series FSYNC PORT : RUNS runs of our generator at CONNS, one row.
countiq_load_series() {
  local fsync="$1" port="$2" r json rc
  local rps=() p50=() p99=() checks=() steal=() mark st idle
  for r in $(seq 1 "$RUNS"); do
    json="$OUT_DIR/countiq-load-fsync$fsync-c$CONNS-r$r.json"
    rc=0
    mark="$(cpu_mark)"
    timeout $((DURATION + RUN_GRACE_S)) "${LOAD_CMD[@]}" --url "http://127.0.0.1:$port" --scenario hot-owner \
      --connections "$CONNS" --duration "${DURATION}s" --json >"$json" 2>"${json%.json}.err" || rc=$?
    read -r st idle <<<"$(cpu_since "$mark")"   # not with_steal: the run must set rc here
    steal+=("$st")
    if ! jq -e .requests_per_s "$json" >/dev/null 2>&1; then
      log "countiq load fsync=$fsync c=$CONNS run$r: no report (exit $rc), see ${json%.json}.err"
      checks+=("error"); continue
    fi
    rps+=("$(jq -r '.requests_per_s' "$json")")
    p50+=("$(jq -r '.latency_us.p50 / 1000' "$json")")
    p99+=("$(jq -r '.latency_us.p99 / 1000' "$json")")
    checks+=("$(jq -r 'if .check.passed then "pass" else "FAIL" end' "$json")")
    log "countiq load fsync=$fsync c=$CONNS run$r: rps=${rps[-1]} p50=${p50[-1]}ms p99=${p99[-1]}ms check=${checks[-1]} host steal ${st}% idle ${idle}%"
  done
  local durable=no; [[ "$fsync" == always ]] && durable=yes
  record CountIQ "fsync=$fsync" "countiq load" "$durable" "$CONNS" "$(median "${rps[@]:-}")" "$(median "${p50[@]:-}")" \
    "$(median "${p99[@]:-}")" "${rps[*]:-}" "check ${checks[*]}; host steal % ${steal[*]:-}"
}

# create_item PORT TOKEN NAME : POST one item over the API, print its id.
create_item() {
  local id
  id="$(curl -fsS -X POST -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$3\",\"qty\":$START_QTY}" "http://127.0.0.1:$1/items" | jq -r .id)"
  [[ -n "$id" && "$id" != null ]] || { log "countiq on port $1: could not create item $3"; return 1; }
  echo "$id"
}

# countiq_wrk PORT : one item created over the API, then wrk PATCHes it (CONNS).
countiq_wrk() {
  local port="$1" token id
  token="$(mint_jwt bench-wrk "$COUNTIQ_JWT_SECRET")"
  id="$(create_item "$port" "$token" "wrk-hot-c$CONNS")"
  BENCH_TOKEN="$token" wrk_series countiq-wrk "http://127.0.0.1:$port/items/$id/qty" CountIQ "fsync=always" yes
}

stage_countiq() {
  log "cargo build --release (countiq) in $REPO_DIR"
  (cd "$REPO_DIR" && cargo build --release -q --bin countiq)
  local bin="$CARGO_TARGET_DIR/release/countiq"
  # Probe the help text, not the exit code: a stub main() exits 0 for anything.
  if ! "$bin" serve --help 2>&1 | grep -q -- '--fsync'; then
    log "SKIP CountIQ: $bin has no 'serve' subcommand yet; its rows stay 'pending'"
    countiq_pending "skipped: no serve subcommand"
    return 0
  fi
  LOAD_CMD=("$bin" load)   # the load/ workspace member, built into the binary
  COUNTIQ_JWT_SECRET="$(openssl rand -hex 32)"
  export COUNTIQ_JWT_SECRET
  local fsync port pid
  for fsync in always never; do
    port="$(free_port)"
    mkdir -p "$WORK/countiq-$fsync"
    "$bin" serve --addr "127.0.0.1:$port" --data-dir "$WORK/countiq-$fsync/data" --fsync "$fsync" \
      >"$OUT_DIR/countiq-server-fsync$fsync.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready "$port"
    log "countiq serve --fsync $fsync up on 127.0.0.1:$port (pid $pid)"
    for CONNS in $CONNS_LIST; do
      countiq_load_series "$fsync" "$port"
      if [[ "$fsync" == always ]]; then countiq_wrk "$port"; fi
    done
    stop_pid "$pid"
  done
}

# ------------------------------------------------------------- PostgreSQL --

PG_DATA=""
pg_stop() {
  [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
}

pg_start() {
  local dir="$WORK/pg"
  mkdir -p "$dir"
  if [[ "$(id -u)" == 0 ]]; then chown postgres: "$dir"; fi
  as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1
  # The peers' settings (bench/PEERS.md); durability on by default.
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
max_wal_size = 4GB
checkpoint_timeout = 15min
CONF
  PG_DATA="$dir/data"
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$dir/pg.log" -w start >/dev/null
  STARTED_PIDS+=("$(head -1 "$PG_DATA/postmaster.pid")")
}

pg_schema() {
  psql -q -d postgres -c "CREATE DATABASE bench" >/dev/null
  export PGDATABASE=bench
  psql -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE items(
  id uuid PRIMARY KEY,
  owner_id text NOT NULL,
  name text NOT NULL,
  qty bigint NOT NULL CHECK (qty >= 0),
  UNIQUE(owner_id, name)
);
INSERT INTO items(id, owner_id, name, qty)
  SELECT md5(i::text)::uuid, 'owner-' || (i % 1000), 'item-' || i, $START_QTY
  FROM generate_series(1, $PG_ROWS) i;
VACUUM ANALYZE items;
SQL
}

# pgbench_once SC TAG -> "tps p50_ms p99_ms failed"
pgbench_once() {
  local sc="$1" tag="$2" logdir="$WORK/pg/log.$2" out tps failed pct
  rm -rf "$logdir"; mkdir -p "$logdir"
  psql -q -c "VACUUM items" -c "CHECKPOINT" >/dev/null
  out="$(cd "$logdir" && PGOPTIONS="-c synchronous_commit=$sc" timeout $((DURATION + RUN_GRACE_S)) \
    pgbench -n -M prepared -c "$CONNS" -j "$(tool_threads)" -T "$DURATION" -f "$WORK/pg/hot.sql" -l --log-prefix=tx 2>&1)"
  printf '%s\n' "$out" >"$OUT_DIR/pg-$tag.txt"
  tps="$(sed -nE 's/^tps = ([0-9.]+) .*without initial connection time.*/\1/p' <<<"$out")"
  failed="$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$out")"
  # per-transaction log: field 3 = latency in µs
  pct="$(cat "$logdir"/tx.* | awk '{print $3}' | sort -n \
         | awk '{a[NR]=$1} END {if (NR==0) {print "NA NA"} else {printf "%.3f %.3f", a[int(NR*0.50)+1]/1000, a[int(NR*0.99)+1]/1000}}')"
  echo "${tps:-NA} $pct ${failed:-0}"
}

stage_postgres() {
  PG_BIN="$(pg_bin_dir)" || { log "SKIP postgres: no server binaries (run bench/setup.sh)"; return 0; }
  PGPORT="$(free_port)"
  export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
  pg_start
  log "postgres $("$PG_BIN/postgres" --version | awk '{print $3}') up on 127.0.0.1:$PGPORT"
  pg_schema
  printf '%s\n' '\set delta random(-1, 1)' \
    "UPDATE items SET qty = qty + :delta WHERE id = md5('1')::uuid AND qty >= -(:delta::bigint);" \
    >"$WORK/pg/hot.sql"
  cp "$WORK/pg/hot.sql" "$OUT_DIR/pg-hot.sql"
  local sc r t p5 p9 f durable
  for sc in on off; do
    for CONNS in $CONNS_LIST; do
      local tps=() p50=() p99=() fails=() steal=() st idle
      for r in $(seq 1 "$RUNS"); do
        read -r st idle t p5 p9 f <<<"$(with_steal pgbench_once "$sc" "sc$sc-c$CONNS-r$r")"
        log "pg synchronous_commit=$sc c=$CONNS run$r: tps=$t p50=${p5}ms p99=${p9}ms failed=$f host steal ${st}% idle ${idle}%"
        tps+=("$t"); p50+=("$p5"); p99+=("$p9"); fails+=("$f"); steal+=("$st")
      done
      durable=yes; [[ "$sc" == off ]] && durable=no
      record PostgreSQL "synchronous_commit=$sc" "pgbench -M prepared -j$(tool_threads)" "$durable" "$CONNS" "$(median "${tps[@]}")" \
        "$(median "${p50[@]}")" "$(median "${p99[@]}")" "${tps[*]}" "failed ${fails[*]}; host steal % (incl. VACUUM+CHECKPOINT) ${steal[*]}"
    done
  done
  psql -Atc "SELECT qty FROM items WHERE id = md5('1')::uuid" | sed 's/^/postgres final hot qty: /' >&2
  pg_stop
}

# ------------------------------------------------------------------ Redis --

# Guarded delta: delta = (ARGV[1] mod 3) - 1 (redis-benchmark can only inject
# random numbers), refused if the value would go below zero.
REDIS_LUA='local d = (tonumber(ARGV[1]) % 3) - 1
local cur = tonumber(redis.call("GET", KEYS[1]) or "0")
if cur + d < 0 then return redis.error_reply("insufficient quantity") end
return redis.call("INCRBY", KEYS[1], d)'

# redis_once PORT N SHA -> "rps p50_ms p99_ms"
redis_once() {
  local port="$1" n="$2" sha="$3" out
  out="$(timeout $((DURATION * 4 + RUN_GRACE_S)) redis-benchmark -h 127.0.0.1 -p "$port" -c "$CONNS" -n "$n" \
         -P 1 -r 100000 --csv EVALSHA "$sha" 1 item:hot __rand_int__ 2>&1)" || true
  printf '%s\n' "$out" >>"$OUT_DIR/redis-raw.csv"
  # "test","rps","avg","min","p50","p95","p99","max"
  awk -F'","' 'NR==2 { print $2, $5, $7 }' <<<"$out"
}

# redis_calibrate PORT SHA -> N: requests for one run of about DURATION
# seconds at CONNS (the rate of a short warm-up × DURATION, at least 5000).
redis_calibrate() {
  local rps0
  read -r rps0 _ <<<"$(redis_once "$1" 20000 "$2")"
  awk -v r="${rps0:-1000}" -v d="$DURATION" 'BEGIN { n = int(r * d); if (n < 5000) n = 5000; print n }'
}

stage_redis() {
  command -v redis-server >/dev/null || { log "SKIP redis: not installed (run bench/setup.sh)"; return 0; }
  local fsync port pid sha n r a p5 p9 durable
  for fsync in always everysec; do
    port="$(free_port)"
    rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
    cat >"$WORK/redis/redis.conf" <<CONF
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir $WORK/redis
save ""
appendonly yes
appendfsync $fsync
auto-aof-rewrite-percentage 0
logfile $WORK/redis/redis.log
CONF
    redis-server "$WORK/redis/redis.conf" &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_port "$port"
    redis-cli -h 127.0.0.1 -p "$port" SET item:hot "$START_QTY" >/dev/null
    sha="$(redis-cli -h 127.0.0.1 -p "$port" SCRIPT LOAD "$REDIS_LUA")"
    log "redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') up on 127.0.0.1:$port, appendfsync=$fsync"
    for CONNS in $CONNS_LIST; do
      n="$(redis_calibrate "$port" "$sha")"
      local rps=() p50=() p99=() steal=() st idle
      for r in $(seq 1 "$RUNS"); do
        read -r st idle a p5 p9 <<<"$(with_steal redis_once "$port" "$n" "$sha")"
        log "redis appendfsync=$fsync c=$CONNS n=$n run$r: rps=$a p50=${p5}ms p99=${p9}ms host steal ${st}% idle ${idle}%"
        rps+=("$a"); p50+=("$p5"); p99+=("$p9"); steal+=("$st")
      done
      durable=yes; [[ "$fsync" == everysec ]] && durable=no
      record Redis "appendfsync=$fsync" "redis-benchmark -P1" "$durable" "$CONNS" "$(median "${rps[@]}")" \
        "$(median "${p50[@]}")" "$(median "${p99[@]}")" "${rps[*]}" "EVALSHA guarded delta, n=$n; host steal % ${steal[*]}"
    done
    redis-cli -h 127.0.0.1 -p "$port" GET item:hot | sed 's/^/redis final item:hot: /' >&2
    stop_pid "$pid"
  done
}

# ------------------------------------------------------------------- axum --

build_axum() {
  mkdir -p "$AXUM_BUILD_DIR/src"
  cp "$BENCH_DIR/axum-ceiling/Cargo.toml" "$AXUM_BUILD_DIR/"
  cp "$BENCH_DIR/axum-ceiling/src/main.rs" "$AXUM_BUILD_DIR/src/"
  log "cargo build --release in $AXUM_BUILD_DIR"
  (cd "$AXUM_BUILD_DIR" && CARGO_TARGET_DIR="$AXUM_BUILD_DIR/target" cargo build --release -q)
}

build_countiq_axum() {
  log "cargo build --release (countiq) in $REPO_DIR"
  (cd "$REPO_DIR" && cargo build --release -q --bin countiq)
  build_axum
}

stage_axum() {
  build_axum
  local port pid url
  port="$(free_port)"
  "$AXUM_BUILD_DIR/target/release/axum-ceiling" "127.0.0.1:$port" 2>"$OUT_DIR/axum-server.log" &
  pid=$!
  STARTED_PIDS+=("$pid")
  wait_port "$port"
  url="http://127.0.0.1:$port/items/c4ca4238-a0b9-2382-0dcc-509a6f75849b/qty"
  curl -fsS -X PATCH -H 'Content-Type: application/json' -d '{"delta":-1}' "$url" | grep -q '"ok":true'
  # A (never checked) token of the same shape: same request bytes as CountIQ's wrk run.
  local token
  token="$(mint_jwt bench-wrk "$(openssl rand -hex 32)")"
  for CONNS in $CONNS_LIST; do
    BENCH_TOKEN="$token" wrk_series axum-ceiling "$url" "axum ceiling" "stateless, no I/O" n/a
  done
  stop_pid "$pid"
}

# ------------------------------------------------------------ interleaved --

# This box's speed drifts by ±15% within minutes (a shared host), so stages
# run minutes apart can skew a ratio. This stage starts the rivals of the
# issue 19 goals at once (CountIQ fsync=always and fsync=never, Redis
# appendfsync=always and =no, the axum ceiling, and with BASELINE_REV that
# revision's CountIQ always and never) and runs them round-robin: per round,
# per connection count of CONNS_LIST, one run each (CountIQ and axum with
# wrk, Redis with redis-benchmark), ROUNDS times (5). Every run is one line
# of $IL_TSV; ratios are per round (runs seconds apart), then the median
# over rounds. `countiq wal fsync-probe` runs in the CountIQ data
# directory's file system at the start and the end of the stage.

# il_add ROUND SYSTEM RPS P50_MS P99_MS BAD STEAL [USER_US SYS_US] : one
# run at CONNS.
il_add() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$CONNS" "$2" "$3" "$4" "$5" "$6" "$7" \
    "${8:-NA}" "${9:-NA}" >>"$IL_TSV"
}

# pid_cpu PID : "user system" CPU time PID has used so far, in clock ticks
# (/proc/PID/stat fields 14 and 15, counted after the ")" that ends the
# command name); "NA NA" once it is gone.
pid_cpu() {
  awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat" 2>/dev/null || echo "NA NA"
}

# cpu_per_request BEFORE AFTER REQUESTS : the server's "user_us sys_us" per
# request between two pid_cpu readings (all its threads: workers, WAL
# writer; kernel work done on its behalf in its system time). Tick-based
# (CLK_TCK, usually 100/s): over a 10 s run a few hundred ticks, so ±1%.
cpu_per_request() {
  awk -v b="$1" -v a="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    if (x[1] !~ /^[0-9]+$/ || y[1] !~ /^[0-9]+$/ || n + 0 <= 0) { print "NA NA"; exit }
    printf "%.1f %.1f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }'
}

# il_wrk ROUND SYSTEM TOKEN URL PID : one wrk run at CONNS against the
# server PID, into $IL_TSV (with PID's CPU time per request).
il_wrk() {
  local st idle x p5 p9 b before after
  before="$(pid_cpu "$5")"
  read -r st idle x p5 p9 b <<<"$(BENCH_TOKEN="$3" with_steal wrk_once "il-$2" "$4")"
  after="$(pid_cpu "$5")"
  # shellcheck disable=SC2046
  il_add "$1" "$2" "$x" "$p5" "$p9" "$b" "$st" \
    $(cpu_per_request "$before" "$after" "$(awk -v r="$x" -v d="$DURATION" 'BEGIN { print (r ~ /^[0-9.]+$/) ? r * d : 0 }')")
}

# il_col CONNS SYSTEM FIELD : that field (4 rps, 5 p50, 6 p99, 7 bad, 8
# steal, 9 user µs, 10 system µs per request) of each round, in round
# order, space-separated.
il_col() {
  [[ -f "$IL_TSV" ]] || return 0
  awk -F'\t' -v c="$1" -v s="$2" -v f="$3" \
    '$2 == c && $3 == s { printf "%s%s", sep, $f; sep = " " } END { print "" }' "$IL_TSV"
}

# il_ratio CONNS SYSTEM_A SYSTEM_B [FIELD] : per round, A's FIELD (4, req/s)
# ÷ B's; NA for a round where either is missing.
il_ratio() {
  [[ -f "$IL_TSV" ]] || return 0
  awk -F'\t' -v c="$1" -v a="$2" -v b="$3" -v f="${4:-4}" '
    $2 == c && $3 == a { x[$1] = $f; if ($1 > n) n = $1 }
    $2 == c && $3 == b { y[$1] = $f; if ($1 > n) n = $1 }
    END {
      for (r = 1; r <= n; r++) {
        v = (x[r] ~ /^[0-9.]+$/ && y[r] ~ /^[0-9.]+$/ && y[r] > 0) ? sprintf("%.3f", x[r] / y[r]) : "NA"
        printf "%s%s", (r > 1 ? " " : ""), v
      }
      print ""
    }' "$IL_TSV"
}

# probe_run BIN DIR WHEN : `countiq wal fsync-probe` in DIR, one line of
# $PROBE_TSV ("WHEN p50_us p99_us max_us", NA when it failed).
probe_run() {
  local json="$OUT_DIR/fsync-probe-$3.json" line
  if "$1" wal fsync-probe --dir "$2" --count "$PROBE_COUNT" --json >"$json" 2>"${json%.json}.err"; then
    line="$(jq -r '"\(.p50_us) \(.p99_us) \(.max_us)"' "$json")"
  else
    log "fsync-probe ($3) failed, see ${json%.json}.err"; line="NA NA NA"
  fi
  log "fsync-probe ($3) in $2: p50/p99/max µs $line"
  printf '%s %s\n' "$3" "$line" >>"$PROBE_TSV"
}

# build_baseline : BASELINE_REV's CountIQ, exported with `git archive` into
# BASELINE_BUILD_DIR/<commit>/src and built there with its own target
# (seeded from this repository's release build, which is only read);
# sets BASELINE_BIN. Kept between runs as a cache.
build_baseline() {
  local sha dir
  [[ "$BASELINE_BUILD_DIR" == /tmp/* ]] || { log "BASELINE_BUILD_DIR must be under /tmp"; return 1; }
  sha="$(git -C "$REPO_DIR" rev-parse --verify "$BASELINE_REV^{commit}")" \
    || { log "BASELINE_REV=$BASELINE_REV is not a commit"; return 1; }
  dir="$BASELINE_BUILD_DIR/$sha"
  BASELINE_BIN="$dir/target/release/countiq"
  if [[ ! -x "$BASELINE_BIN" ]]; then
    rm -rf "$dir/src"; mkdir -p "$dir/src" "$dir/target"
    git -C "$REPO_DIR" archive "$sha" | tar -x -C "$dir/src"
    if [[ ! -d "$dir/target/release" && -d "$CARGO_TARGET_DIR/release" ]]; then
      cp -a "$CARGO_TARGET_DIR/release" "$dir/target/"
      rm -rf "$dir/target/release/incremental"
    fi
    log "cargo build --release (countiq $BASELINE_REV = ${sha:0:12}) in $dir"
    (cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo build --release --locked -q --bin countiq)
  fi
  "$BASELINE_BIN" serve --help 2>&1 | grep -q -- '--fsync' \
    || { log "baseline $BASELINE_REV has no 'serve --fsync'"; return 1; }
}

# il_countiq BIN FSYNC NAME [DATA_ROOT] : start a CountIQ server for the
# stage, its data dir under DATA_ROOT (default $WORK); sets SRV_PORT,
# SRV_ITEM (one item created over the API) and SRV_PID.
il_countiq() {
  local pid
  SRV_PORT="$(free_port)"
  "$1" serve --addr "127.0.0.1:$SRV_PORT" --data-dir "${4:-$WORK}/countiq-il-$3/data" --fsync "$2" \
    >"$OUT_DIR/countiq-server-interleaved-$3.log" 2>&1 &
  pid=$!; STARTED_PIDS+=("$pid")
  wait_ready "$SRV_PORT"
  SRV_ITEM="$(create_item "$SRV_PORT" "$IL_TOKEN" wrk-hot)"
  SRV_PID="$pid"
  log "countiq ($3) --fsync $2 up on 127.0.0.1:$SRV_PORT (pid $pid)"
}

stage_interleaved() {
  local rounds="${ROUNDS:-5}" bin sha aport apid aurl atoken r
  build_countiq_axum
  bin="$CARGO_TARGET_DIR/release/countiq"
  if [[ -n "$BASELINE_REV" ]]; then build_baseline; fi
  COUNTIQ_JWT_SECRET="$(openssl rand -hex 32)"
  export COUNTIQ_JWT_SECRET
  IL_TOKEN="$(mint_jwt bench-wrk "$COUNTIQ_JWT_SECRET")"
  # system label -> "port item pid"
  declare -A srv
  il_countiq "$bin" always always; srv[countiq-always]="$SRV_PORT $SRV_ITEM $SRV_PID"
  il_countiq "$bin" never never; srv[countiq-never]="$SRV_PORT $SRV_ITEM $SRV_PID"
  local systems=(countiq-always countiq-never)
  # The same binary with --fsync always, its log on a RAM file system:
  # every step of a durable write but the disk's (fdatasync returns at
  # once). Not durable; it shows what the rest of the path costs, i.e. the
  # most a faster commit path could reach on this box.
  if [[ -n "$RAMFS_DIR" && "$(stat -f -c %T "$RAMFS_DIR" 2>/dev/null)" == tmpfs ]]; then
    RAM_WORK="$(mktemp -d "$RAMFS_DIR/countiq-il.XXXXXX")"
    il_countiq "$bin" always ram "$RAM_WORK"; srv[countiq-ram]="$SRV_PORT $SRV_ITEM $SRV_PID"
    systems+=(countiq-ram)
  else
    log "no tmpfs at RAMFS_DIR=$RAMFS_DIR: the 'log on tmpfs' bound is not measured"
  fi
  if [[ -n "$BASELINE_REV" ]]; then
    il_countiq "$BASELINE_BIN" always baseline-always; srv[baseline-always]="$SRV_PORT $SRV_ITEM $SRV_PID"
    il_countiq "$BASELINE_BIN" never baseline-never; srv[baseline-never]="$SRV_PORT $SRV_ITEM $SRV_PID"
    systems+=(baseline-always baseline-never)
  fi

  # Redis with appendfsync always (the goals' peer) and no (its round trip
  # without a sync: what a sync adds to Redis, and how much lighter RESP is
  # than HTTP at one connection). name -> "port pid sha"; CONNS -> -n.
  declare -A rsrv rn
  local rs rport rpid
  for rs in always no; do
    rport="$(free_port)"
    rm -rf "$WORK/redis-il-$rs"; mkdir -p "$WORK/redis-il-$rs"
    printf '%s\n' "bind 127.0.0.1" "port $rport" "daemonize no" "dir $WORK/redis-il-$rs" 'save ""' \
      "appendonly yes" "appendfsync $rs" "auto-aof-rewrite-percentage 0" "logfile $WORK/redis-il-$rs/redis.log" \
      >"$WORK/redis-il-$rs/redis.conf"
    redis-server "$WORK/redis-il-$rs/redis.conf" &
    rpid=$!; STARTED_PIDS+=("$rpid")
    wait_port "$rport"
    redis-cli -h 127.0.0.1 -p "$rport" SET item:hot "$START_QTY" >/dev/null
    sha="$(redis-cli -h 127.0.0.1 -p "$rport" SCRIPT LOAD "$REDIS_LUA")"
    rsrv[redis-$rs]="$rport $rpid $sha"
  done
  read -r rport _ sha <<<"${rsrv[redis-always]}"
  for CONNS in $CONNS_LIST; do rn[$CONNS]="$(redis_calibrate "$rport" "$sha")"; done

  aport="$(free_port)"
  "$AXUM_BUILD_DIR/target/release/axum-ceiling" "127.0.0.1:$aport" 2>"$OUT_DIR/axum-server-interleaved.log" &
  apid=$!; STARTED_PIDS+=("$apid")
  wait_port "$aport"
  aurl="http://127.0.0.1:$aport/items/c4ca4238-a0b9-2382-0dcc-509a6f75849b/qty"
  atoken="$(mint_jwt bench-wrk "$(openssl rand -hex 32)")"

  probe_run "$bin" "$WORK/countiq-il-always/data" start
  local s port item pid st idle x p5 p9 before after
  for r in $(seq 1 "$rounds"); do
    for CONNS in $CONNS_LIST; do
      for s in "${systems[@]}"; do
        read -r port item pid <<<"${srv[$s]}"
        il_wrk "$r" "$s" "$IL_TOKEN" "http://127.0.0.1:$port/items/$item/qty" "$pid"
      done
      for rs in redis-always redis-no; do
        read -r rport rpid sha <<<"${rsrv[$rs]}"
        before="$(pid_cpu "$rpid")"
        read -r st idle x p5 p9 <<<"$(with_steal redis_once "$rport" "${rn[$CONNS]}" "$sha")"
        after="$(pid_cpu "$rpid")"
        # shellcheck disable=SC2046
        il_add "$r" "$rs" "${x:-NA}" "${p5:-NA}" "${p9:-NA}" "" "$st" \
          $(cpu_per_request "$before" "$after" "${rn[$CONNS]}")
      done
      il_wrk "$r" axum "$atoken" "$aurl" "$apid"
      log "interleaved round $r c=$CONNS: req/s $(awk -F'\t' -v r="$r" -v c="$CONNS" \
        '$1 == r && $2 == c { printf "%s %s; ", $3, $4 }' "$IL_TSV")"
    done
  done
  probe_run "$bin" "$WORK/countiq-il-always/data" end

  local label runs tool durable note
  for CONNS in $CONNS_LIST; do
    for s in "${systems[@]}" redis-always redis-no axum; do
      case "$s" in
        countiq-always) label="CountIQ fsync=always"; durable=yes ;;
        countiq-never) label="CountIQ fsync=never"; durable=no ;;
        countiq-ram) label="CountIQ fsync=always, log on tmpfs (bound)"; durable=no ;;
        baseline-always) label="CountIQ $BASELINE_REV fsync=always"; durable=yes ;;
        baseline-never) label="CountIQ $BASELINE_REV fsync=never"; durable=no ;;
        redis-always) label="Redis appendfsync=always"; durable=yes ;;
        redis-no) label="Redis appendfsync=no"; durable=no ;;
        axum) label="axum ceiling"; durable=n/a ;;
      esac
      tool="wrk -t$(tool_threads)"; [[ "$s" == redis-* ]] && tool="redis-benchmark -P1"
      runs="$(il_col "$CONNS" "$s" 4)"
      note="server CPU µs/request user+sys $(paste -d+ <(il_col "$CONNS" "$s" 9 | tr ' ' '\n') \
        <(il_col "$CONNS" "$s" 10 | tr ' ' '\n') | paste -sd' '); host steal % $(il_col "$CONNS" "$s" 8)"
      case "$s" in
        countiq-*|baseline-*|axum) note="non2xx+sockerr $(il_col "$CONNS" "$s" 7); $note" ;;
        redis-*) note="n=${rn[$CONNS]}; $note" ;;
      esac
      if [[ "$s" == countiq-always || "$s" == countiq-ram || "$s" == baseline-always ]]; then
        x="$(il_ratio "$CONNS" "$s" redis-always)"
        # shellcheck disable=SC2086
        note="per-round ÷ Redis always: $x (median $(median $x)); $note"
      fi
      if [[ "$s" == countiq-* || "$s" == baseline-* ]]; then
        x="$(il_ratio "$CONNS" "$s" axum)"
        # shellcheck disable=SC2086
        note="per-round ÷ axum: $x (median $(median $x)); $note"
      fi
      # Word splitting of the per-round values is intended.
      # shellcheck disable=SC2046
      record "interleaved" "$label" "$tool" "$durable" "$CONNS" "$(median $(il_col "$CONNS" "$s" 4))" \
        "$(median $(il_col "$CONNS" "$s" 5))" "$(median $(il_col "$CONNS" "$s" 6))" "$runs" "$note"
    done
  done
  # probe_mean FIELD : the mean of the start and end probes' FIELD (2 p50,
  # 3 p99) in ms, NA unless both are numbers.
  probe_mean() {
    awk -v f="$1" '$f ~ /^[0-9.]+$/ { s += $f; n++ } END { if (n == 2) printf "%.3f", s / 2000; else print "NA" }' "$PROBE_TSV"
  }
  record "interleaved" "fsync-probe, start and end" "countiq wal fsync-probe" yes 1 NA "$(probe_mean 2)" "$(probe_mean 3)" "" \
    "p50/p99 µs at the start $(awk '$1 == "start" { print $2 "/" $3 }' "$PROBE_TSV"), at the end $(awk '$1 == "end" { print $2 "/" $3 }' "$PROBE_TSV") (the columns: their means); $PROBE_COUNT × (append one framed PATCH record + fdatasync) in the CountIQ always data dir"
  for s in "${systems[@]}"; do
    read -r port item _ <<<"${srv[$s]}"
    curl -fsS -H "Authorization: Bearer $IL_TOKEN" "http://127.0.0.1:$port/items/$item" | jq -c '{qty, version}' \
      | sed "s/^/countiq interleaved ($s) final item: /" >&2
  done
  kill_started
  if [[ -n "${RAM_WORK:-}" ]]; then rm -rf "$RAM_WORK"; fi
}

# ------------------------------------------------------------------ goals --

# goal_line TEXT VALUES RULE THRESHOLD : one row of the goals table from
# per-round VALUES. RULE: "median>=" (the median of the rounds), "worst>="
# (every round: the lowest), "median<=" (the median; worst = the highest).
goal_line() {
  local text="$1" values="$2" rule="$3" th="$4" med worst verdict
  # Word splitting of the per-round values is intended.
  # shellcheck disable=SC2086
  med="$(median $values)"
  # shellcheck disable=SC2086
  case "$rule" in
    *">=") worst="$(printf '%s\n' $values | { grep -E '^[0-9.]+$' || true; } | sort -g | head -1)" ;;
    *) worst="$(printf '%s\n' $values | { grep -E '^[0-9.]+$' || true; } | sort -g | tail -1)" ;;
  esac
  worst="${worst:-NA}"
  local v="$med"; [[ "$rule" == worst* ]] && v="$worst"
  if [[ "$v" == NA ]]; then verdict="not measured"
  elif awk -v v="$v" -v t="$th" -v r="$rule" 'BEGIN { exit !((r ~ />=$/) ? v >= t : v <= t) }'; then verdict="pass"
  else verdict="FAIL"; fi
  printf '| %s | %s | %s | %s | %s (%s %s) |\n' "$text" "$med" "$worst" "${values:-none}" "$verdict" "${rule%??}" "${rule: -2} $th"
}

# ref_line TEXT VALUES : a reference row under the goals (no rule): what a
# peer or a bound of this box reached in the same rounds, to read a goal's
# verdict against. "worst round" is the lowest value.
ref_line() {
  local med low
  # Word splitting of the per-round values is intended.
  # shellcheck disable=SC2086
  med="$(median $2)"
  # shellcheck disable=SC2086
  low="$(printf '%s\n' $2 | { grep -E '^[0-9.]+$' || true; } | sort -g | head -1)"
  printf '| %s | %s | %s | %s | reference, not a goal |\n' "$1" "$med" "${low:-NA}" "${2:-none}"
}

# p50_over_probe CONNS SYSTEM [plus] : per round, SYSTEM's p50 ÷ the
# fsync-probe p50 ($probe, µs); with "plus", (SYSTEM's p50 + the probe's)
# ÷ the probe's: a request that costs SYSTEM's round trip and one sync.
p50_over_probe() {
  [[ -f "$IL_TSV" ]] || return 0
  il_col "$1" "$2" 5 | awk -v p="$probe" -v plus="${3:-}" '{
    for (i = 1; i <= NF; i++) {
      ok = $i ~ /^[0-9.]+$/ && p ~ /^[0-9.]+$/ && p > 0
      printf "%s%s", (i > 1 ? " " : ""), ok ? sprintf("%.3f", ($i * 1000 + (plus == "plus" ? p : 0)) / p) : "NA"
    }
    print ""
  }'
}

# il_p50_expr CONNS EXPR : per round, EXPR (awk, over the variables ca cn
# ra rn ax: the p50s in µs of CountIQ always and never, Redis always and
# no, and the axum ceiling in that round), "%.1f" for a difference and
# "%.3f" for a ratio (EXPR's form decides: FMT env, default %.3f); NA for a
# round where one is missing.
il_p50_expr() {
  [[ -f "$IL_TSV" ]] || return 0
  awk -F'\t' -v c="$1" -v fmt="${FMT:-%.3f}" '
    $2 == c { v[$1, $3] = $5; if ($1 > n) n = $1 }
    function us(r, s) { return (v[r, s] ~ /^[0-9.]+$/) ? v[r, s] * 1000 : "" }
    END {
      for (r = 1; r <= n; r++) {
        ca = us(r, "countiq-always"); cn = us(r, "countiq-never")
        ra = us(r, "redis-always"); rn = us(r, "redis-no"); ax = us(r, "axum")
        ok = 1
        '"$2"'
        printf "%s%s", (r > 1 ? " " : ""), ok ? sprintf(fmt, x) : "NA"
      }
      print ""
    }' "$IL_TSV"
}

# in_list N : whether CONNS_LIST has N.
in_list() { [[ " $CONNS_LIST " == *" $1 "* ]]; }

render_goals() {
  [[ -s "$IL_TSV" ]] || return 0
  local probe
  probe="$(awk '$2 ~ /^[0-9.]+$/ { s += $2; n++ } END { if (n == 2) printf "%.1f", s / n; else print "NA" }' "$PROBE_TSV" 2>/dev/null || echo NA)"
  echo
  echo "### Goals (issue 19), from the interleaved rounds"
  echo
  echo "Per-round ratios (runs seconds apart), their median and the worst round; the fsync-probe p50 is the mean of the stage's start and end probes ($probe µs)."
  echo
  echo "| goal | median | worst round | per round | verdict (rule) |"
  echo "|---|---:|---:|---|---|"
  if in_list 1; then
    goal_line "1 connection, durable: CountIQ always ÷ Redis always (req/s)" "$(il_ratio 1 countiq-always redis-always)" "median>=" 1
    goal_line "1 connection, durable: CountIQ always p50 ÷ fsync-probe p50" "$(p50_over_probe 1 countiq-always)" "median<=" 1.3
    ref_line "1 connection: Redis always p50 ÷ fsync-probe p50" "$(p50_over_probe 1 redis-always)"
    ref_line "1 connection, bound: (axum ceiling p50 + fsync-probe p50) ÷ fsync-probe p50" "$(p50_over_probe 1 axum plus)"
    ref_line "1 connection, bound: CountIQ, log on tmpfs ÷ Redis always (req/s)" "$(il_ratio 1 countiq-ram redis-always)"
    # Where the one-connection gap is: what the sync adds to each server's
    # p50, and the round trip without one (RESP against bare HTTP).
    ref_line "1 connection: what a sync adds to p50, CountIQ always − never (µs)" \
      "$(FMT=%.1f il_p50_expr 1 'if (ca == "" || cn == "") ok = 0; else x = ca - cn')"
    ref_line "1 connection: what a sync adds to p50, Redis always − no (µs)" \
      "$(FMT=%.1f il_p50_expr 1 'if (ra == "" || rn == "") ok = 0; else x = ra - rn')"
    ref_line "1 connection: round trip without a sync, Redis no p50 ÷ axum ceiling p50" \
      "$(il_p50_expr 1 'if (rn == "" || ax == "" || ax == 0) ok = 0; else x = rn / ax')"
    ref_line "1 connection, bound: Redis always p50 ÷ (axum ceiling p50 + what a sync adds to Redis)" \
      "$(il_p50_expr 1 'if (ra == "" || rn == "" || ax == "" || ax + ra - rn <= 0) ok = 0; else x = ra / (ax + ra - rn)')"
  else
    echo "| 1 connection goals | | | | not measured: 1 is not in CONNS_LIST |"
  fi
  if in_list 64; then
    goal_line "64 connections, durable: CountIQ always ÷ Redis always (req/s), every round" "$(il_ratio 64 countiq-always redis-always)" "worst>=" 1.2
    if [[ -n "$BASELINE_REV" ]]; then
      goal_line "64 connections, durable: CountIQ always ÷ CountIQ $BASELINE_REV always (req/s)" "$(il_ratio 64 countiq-always baseline-always)" "median>=" 1
    fi
    ref_line "64 connections, bound: CountIQ, log on tmpfs ÷ Redis always (req/s)" "$(il_ratio 64 countiq-ram redis-always)"
    goal_line "--fsync never, 64 connections: CountIQ never ÷ axum ceiling (req/s)" "$(il_ratio 64 countiq-never axum)" "median>=" 0.8
  else
    echo "| 64 connection goals | | | | not measured: 64 is not in CONNS_LIST |"
  fi
}

# ------------------------------------------------------------------ table --

# The ratio columns divide the CountIQ always row of the countiq stage with
# the same connection count (countiq load, wrk) by the row's req/s.
render_table() {
  awk -F'\t' '
    function ratio(ref, x) { return (ref ~ /^[0-9.]+$/ && x ~ /^[0-9.]+$/ && x > 0) ? sprintf("%.2f", ref / x) : "pending" }
    function num(x, f) { return (x ~ /^[0-9.]+$/) ? sprintf(f, x) : x }
    { row[NR] = $0 }
    $1 == "CountIQ" && $2 == "fsync=always" && $3 == "countiq load" { ref_load[$5] = $6 }
    $1 == "CountIQ" && $2 == "fsync=always" && $3 ~ /^wrk / { ref_wrk[$5] = $6 }
    END {
      print "| system | config | load tool | durable | conns | req/s | p50 ms | p99 ms | CountIQ always (countiq load) ÷ row | CountIQ always (wrk) ÷ row | runs (req/s) | note |"
      print "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"
      for (i = 1; i <= NR; i++) {
        split(row[i], f, "\t")
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], f[5],
          num(f[6], "%.0f"), num(f[7], "%.3f"), num(f[8], "%.3f"), ratio(ref_load[f[5]], f[6]), ratio(ref_wrk[f[5]], f[6]), f[9], f[10]
      }
    }' "$SUMMARY"
}

machine_facts() {
  local st idle
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc); cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); kernel: $(uname -sr)"
    # Other work on the box (builds, tests) skews every row: say how busy it was.
    echo "load average (1/5/15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    # The host's share, over the whole invocation (each row's note has its runs').
    read -r st idle <<<"$(cpu_since "$START_MARK")"
    echo "CPU time taken by the host (steal) over the whole run: ${st}%; idle (incl. iowait): ${idle}%"
    echo "knobs: DURATION=$DURATION CONNS_LIST=\"$CONNS_LIST\" RUNS=$RUNS ROUNDS=${ROUNDS:-5} STAGES=\"$STAGES\" BASELINE_REV=\"$BASELINE_REV\""
  } | tee "$OUT_DIR/machine.txt"
}

# ------------------------------------------------------------------- main --

# Each stage runs in its own subshell with errexit on and its own cleanup
# trap, so one failing stage stops only its own servers and the rest still run.
FAILED=()
START_MARK="$(cpu_mark)"
for stage in $STAGES; do
  case "$stage" in countiq|postgres|redis|axum|interleaved) ;; *) log "unknown stage $stage"; exit 2 ;; esac
  log "=== stage $stage"
  set +e
  (
    set -e
    trap 'pg_stop; kill_started' EXIT
    trap 'exit 130' INT TERM
    "stage_$stage"
  )
  rc=$?
  set -e
  if ((rc != 0)); then log "stage $stage FAILED (exit $rc)"; FAILED+=("$stage"); fi
done

echo
machine_facts
echo
{ render_table; render_goals; } | tee "$OUT_DIR/table.md"
if ((${#FAILED[@]})); then log "failed stages: ${FAILED[*]}"; exit 1; fi
