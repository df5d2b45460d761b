#!/usr/bin/env bash
# Side-by-side benchmark: the same hot-owner workload (one item/row/key, a
# random delta in [-1, 1], never below zero, CONNS concurrent clients) against
#   1. CountIQ   `countiq serve --fsync always|never`, driven by `countiq load`
#                (with its correctness check) and, for fsync=always, by wrk;
#   2. PostgreSQL pgbench hot-row guarded UPDATE, synchronous_commit on|off;
#   3. Redis     Lua-guarded delta (EVALSHA), appendfsync always|everysec;
#   4. axum      the stateless HTTP ceiling, driven by wrk;
#   5. interleaved: CountIQ always, Redis always and axum started together
#                and run round-robin, ROUNDS times, for drift-free ratios.
# Prints one markdown table (also bench/out/table.md); raw output in bench/out/.
#
# Knobs (environment): DURATION s per run (10), CONNS (64), RUNS per
# configuration (3, medians reported), ROUNDS of the interleaved stage (5),
# STAGES ("countiq postgres redis axum interleaved"),
# PG_ROWS (100000), AXUM_BUILD_DIR (/tmp/countiq-bench-axum-ceiling).
# Every server is started here on 127.0.0.1 only, in a fresh temp dir, and
# stopped at exit (by PID); every load run is bounded by -d/-T/-n + timeout.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

STAGES="${STAGES:-countiq postgres redis axum interleaved}"
PG_ROWS="${PG_ROWS:-100000}"
AXUM_BUILD_DIR="${AXUM_BUILD_DIR:-/tmp/countiq-bench-axum-ceiling}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
START_QTY=1000000000   # like the peers: deltas in [-1, 1] never reach 0
READY_TRIES=300        # x 0.1 s: how long a server may take to become ready

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.txt "$OUT_DIR"/*.json "$OUT_DIR"/*.csv "$OUT_DIR"/*.log "$SUMMARY"
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
  record CountIQ "fsync=always" "countiq load" yes pending NA NA "" "$why"
  record CountIQ "fsync=always" "wrk -t2" yes pending NA NA "" "$why"
  record CountIQ "fsync=never" "countiq load" no pending NA NA "" "$why"
}

# countiq_load_series FSYNC PORT : RUNS runs of our generator, one row.
countiq_load_series() {
  local fsync="$1" port="$2" r json rc
  local rps=() p50=() p99=() checks=() steal=() mark st idle
  for r in $(seq 1 "$RUNS"); do
    json="$OUT_DIR/countiq-load-fsync$fsync-r$r.json"
    rc=0
    mark="$(cpu_mark)"
    timeout $((DURATION + RUN_GRACE_S)) "${LOAD_CMD[@]}" --url "http://127.0.0.1:$port" --scenario hot-owner \
      --connections "$CONNS" --duration "${DURATION}s" --json >"$json" 2>"${json%.json}.err" || rc=$?
    read -r st idle <<<"$(cpu_since "$mark")"   # not with_steal: the run must set rc here
    steal+=("$st")
    if ! jq -e .requests_per_s "$json" >/dev/null 2>&1; then
      log "countiq load fsync=$fsync run$r: no report (exit $rc), see ${json%.json}.err"
      checks+=("error"); continue
    fi
    rps+=("$(jq -r '.requests_per_s' "$json")")
    p50+=("$(jq -r '.latency_us.p50 / 1000' "$json")")
    p99+=("$(jq -r '.latency_us.p99 / 1000' "$json")")
    checks+=("$(jq -r 'if .check.passed then "pass" else "FAIL" end' "$json")")
    log "countiq load fsync=$fsync run$r: rps=${rps[-1]} p50=${p50[-1]}ms p99=${p99[-1]}ms check=${checks[-1]} host steal ${st}% idle ${idle}%"
  done
  local durable=no; [[ "$fsync" == always ]] && durable=yes
  record CountIQ "fsync=$fsync" "countiq load" "$durable" "$(median "${rps[@]:-}")" "$(median "${p50[@]:-}")" \
    "$(median "${p99[@]:-}")" "${rps[*]:-}" "check ${checks[*]}; host steal % ${steal[*]:-}"
}

# countiq_wrk PORT : one item created over the API, then wrk PATCHes it.
countiq_wrk() {
  local port="$1" token id
  token="$(mint_jwt bench-wrk "$COUNTIQ_JWT_SECRET")"
  id="$(curl -fsS -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"wrk-hot\",\"qty\":$START_QTY}" "http://127.0.0.1:$port/items" | jq -r .id)"
  [[ -n "$id" && "$id" != null ]] || { log "countiq: could not create the wrk item"; return 1; }
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
    countiq_load_series "$fsync" "$port"
    [[ "$fsync" == always ]] && countiq_wrk "$port"
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
    pgbench -n -M prepared -c "$CONNS" -j 2 -T "$DURATION" -f "$WORK/pg/hot.sql" -l --log-prefix=tx 2>&1)"
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
    local tps=() p50=() p99=() fails=() steal=() st idle
    for r in $(seq 1 "$RUNS"); do
      read -r st idle t p5 p9 f <<<"$(with_steal pgbench_once "$sc" "sc$sc-r$r")"
      log "pg synchronous_commit=$sc run$r: tps=$t p50=${p5}ms p99=${p9}ms failed=$f host steal ${st}% idle ${idle}%"
      tps+=("$t"); p50+=("$p5"); p99+=("$p9"); fails+=("$f"); steal+=("$st")
    done
    durable=yes; [[ "$sc" == off ]] && durable=no
    record PostgreSQL "synchronous_commit=$sc" "pgbench -M prepared -j2" "$durable" "$(median "${tps[@]}")" \
      "$(median "${p50[@]}")" "$(median "${p99[@]}")" "${tps[*]}" "failed ${fails[*]}; host steal % (incl. VACUUM+CHECKPOINT) ${steal[*]}"
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

stage_redis() {
  command -v redis-server >/dev/null || { log "SKIP redis: not installed (run bench/setup.sh)"; return 0; }
  local fsync port pid sha rps0 n r a p5 p9 durable
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
    # Calibrate -n so one run lasts about DURATION seconds.
    read -r rps0 _ <<<"$(redis_once "$port" 20000 "$sha")"
    n="$(awk -v r="${rps0:-1000}" -v d="$DURATION" 'BEGIN { n = int(r * d); if (n < 5000) n = 5000; print n }')"
    local rps=() p50=() p99=() steal=() st idle
    for r in $(seq 1 "$RUNS"); do
      read -r st idle a p5 p9 <<<"$(with_steal redis_once "$port" "$n" "$sha")"
      log "redis appendfsync=$fsync n=$n run$r: rps=$a p50=${p5}ms p99=${p9}ms host steal ${st}% idle ${idle}%"
      rps+=("$a"); p50+=("$p5"); p99+=("$p9"); steal+=("$st")
    done
    durable=yes; [[ "$fsync" == everysec ]] && durable=no
    record Redis "appendfsync=$fsync" "redis-benchmark -P1" "$durable" "$(median "${rps[@]}")" \
      "$(median "${p50[@]}")" "$(median "${p99[@]}")" "${rps[*]}" "EVALSHA guarded delta, n=$n; host steal % ${steal[*]}"
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
  BENCH_TOKEN="$(mint_jwt bench-wrk "$(openssl rand -hex 32)")" wrk_series axum-ceiling "$url" "axum ceiling" "stateless, no I/O" n/a
  stop_pid "$pid"
}

# ------------------------------------------------------------ interleaved --

# This box's speed drifts by ±15% within minutes (a shared host), so stages
# run minutes apart can skew a ratio. This stage starts the three HTTP/RESP
# rivals of the hot-owner goals at once (CountIQ fsync=always, Redis
# appendfsync=always, the axum ceiling) and runs them round-robin, ROUNDS
# times (5), one run each per round; the ratios are per round (runs seconds
# apart), then the median over rounds.
stage_interleaved() {
  local rounds="${ROUNDS:-5}" bin cport cpid token id rport rpid sha n rps0 aport apid aurl r
  build_countiq_axum
  bin="$CARGO_TARGET_DIR/release/countiq"
  cport="$(free_port)"
  COUNTIQ_JWT_SECRET="$(openssl rand -hex 32)"
  export COUNTIQ_JWT_SECRET
  "$bin" serve --addr "127.0.0.1:$cport" --data-dir "$WORK/countiq-il/data" --fsync always \
    >"$OUT_DIR/countiq-server-interleaved.log" 2>&1 &
  cpid=$!; STARTED_PIDS+=("$cpid")
  wait_ready "$cport"
  token="$(mint_jwt bench-wrk "$COUNTIQ_JWT_SECRET")"
  id="$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"name\":\"wrk-hot\",\"qty\":$START_QTY}" "http://127.0.0.1:$cport/items" | jq -r .id)"

  rport="$(free_port)"
  rm -rf "$WORK/redis-il"; mkdir -p "$WORK/redis-il"
  printf '%s\n' "bind 127.0.0.1" "port $rport" "daemonize no" "dir $WORK/redis-il" 'save ""' \
    "appendonly yes" "appendfsync always" "auto-aof-rewrite-percentage 0" "logfile $WORK/redis-il/redis.log" \
    >"$WORK/redis-il/redis.conf"
  redis-server "$WORK/redis-il/redis.conf" &
  rpid=$!; STARTED_PIDS+=("$rpid")
  wait_port "$rport"
  redis-cli -h 127.0.0.1 -p "$rport" SET item:hot "$START_QTY" >/dev/null
  sha="$(redis-cli -h 127.0.0.1 -p "$rport" SCRIPT LOAD "$REDIS_LUA")"
  read -r rps0 _ <<<"$(redis_once "$rport" 20000 "$sha")"
  n="$(awk -v r="${rps0:-1000}" -v d="$DURATION" 'BEGIN { n = int(r * d); if (n < 5000) n = 5000; print n }')"

  aport="$(free_port)"
  "$AXUM_BUILD_DIR/target/release/axum-ceiling" "127.0.0.1:$aport" 2>"$OUT_DIR/axum-server-interleaved.log" &
  apid=$!; STARTED_PIDS+=("$apid")
  wait_port "$aport"
  aurl="http://127.0.0.1:$aport/items/c4ca4238-a0b9-2382-0dcc-509a6f75849b/qty"
  local atoken
  atoken="$(mint_jwt bench-wrk "$(openssl rand -hex 32)")"

  local c=() rd=() ax=() cr=() ar=() cp50=() rp50=() ap50=() cp99=() rp99=() ap99=() x p5 p9 b
  local cs=() rs=() as=() cb=() ab=() st idle
  for r in $(seq 1 "$rounds"); do
    read -r st idle x p5 p9 b <<<"$(BENCH_TOKEN="$token" with_steal wrk_once countiq-il "http://127.0.0.1:$cport/items/$id/qty")"
    c+=("$x"); cp50+=("$p5"); cp99+=("$p9"); cb+=("$b"); cs+=("$st")
    read -r st idle x p5 p9 <<<"$(with_steal redis_once "$rport" "$n" "$sha")"
    rd+=("$x"); rp50+=("$p5"); rp99+=("$p9"); rs+=("$st")
    read -r st idle x p5 p9 b <<<"$(BENCH_TOKEN="$atoken" with_steal wrk_once axum-il "$aurl")"
    ax+=("$x"); ap50+=("$p5"); ap99+=("$p9"); ab+=("$b"); as+=("$st")
    cr+=("$(awk -v a="${c[-1]}" -v b="${rd[-1]}" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')")
    ar+=("$(awk -v a="${c[-1]}" -v b="${ax[-1]}" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')")
    log "interleaved round $r: CountIQ ${c[-1]} (p99 ${cp99[-1]} ms), Redis always ${rd[-1]}, axum ${ax[-1]}; CountIQ/Redis ${cr[-1]}, CountIQ/axum ${ar[-1]}; host steal % ${cs[-1]}/${rs[-1]}/${as[-1]}"
  done
  record "interleaved" "CountIQ fsync=always" "wrk -t2" yes "$(median "${c[@]}")" "$(median "${cp50[@]}")" "$(median "${cp99[@]}")" "${c[*]}" \
    "per-round ÷ Redis always: ${cr[*]} (median $(median "${cr[@]}")); ÷ axum: ${ar[*]} (median $(median "${ar[@]}")); non2xx+sockerr ${cb[*]}; host steal % ${cs[*]}"
  record "interleaved" "Redis appendfsync=always" "redis-benchmark -P1" yes "$(median "${rd[@]}")" "$(median "${rp50[@]}")" "$(median "${rp99[@]}")" "${rd[*]}" "n=$n; host steal % ${rs[*]}"
  record "interleaved" "axum ceiling" "wrk -t2" n/a "$(median "${ax[@]}")" "$(median "${ap50[@]}")" "$(median "${ap99[@]}")" "${ax[*]}" "non2xx+sockerr ${ab[*]}; host steal % ${as[*]}"
  curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$cport/items/$id" | jq -c '{qty, version}' \
    | sed 's/^/countiq interleaved final item: /' >&2
  stop_pid "$cpid"; stop_pid "$rpid"; stop_pid "$apid"
}

# ------------------------------------------------------------------ table --

render_table() {
  awk -F'\t' '
    function ratio(ref, x) { return (ref ~ /^[0-9.]+$/ && x ~ /^[0-9.]+$/ && x > 0) ? sprintf("%.2f", ref / x) : "pending" }
    function num(x, f) { return (x ~ /^[0-9.]+$/) ? sprintf(f, x) : x }
    { row[NR] = $0 }
    $1 == "CountIQ" && $2 == "fsync=always" && $3 == "countiq load" { ref_load = $5 }
    $1 == "CountIQ" && $2 == "fsync=always" && $3 == "wrk -t2" { ref_wrk = $5 }
    END {
      print "| system | config | load tool | durable | req/s | p50 ms | p99 ms | CountIQ always (countiq load) ÷ row | CountIQ always (wrk) ÷ row | runs (req/s) | note |"
      print "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"
      for (i = 1; i <= NR; i++) {
        split(row[i], f, "\t")
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4],
          num(f[5], "%.0f"), num(f[6], "%.3f"), num(f[7], "%.3f"), ratio(ref_load, f[5]), ratio(ref_wrk, f[5]), f[8], f[9]
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
    echo "knobs: DURATION=$DURATION CONNS=$CONNS RUNS=$RUNS STAGES=\"$STAGES\""
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
render_table | tee "$OUT_DIR/table.md"
if ((${#FAILED[@]})); then log "failed stages: ${FAILED[*]}"; exit 1; fi
