#!/usr/bin/env bash
# Aggregate durable req/s: one CountIQ node alone, the same node behind
# its own nginx (the proxy's cost), and three nodes behind nginx, measured
# side by side in one run (rounds interleaved, medians).
#
#   scripts/cluster-up.sh && scripts/bench-cluster.sh
#   ROUNDS=3 DURATION=10s CONNS=64 OWNERS=1000 scripts/bench-cluster.sh
#
# Both targets are reached the same way: by container IP on the compose
# network (the published loopback ports go through docker-proxy, a
# userland copy loop that would cap both). The single node is a container
# of the same image, --fsync always, on the same network, not in the
# cluster. The load generator runs on the host: `countiq load --scenario
# uniform`, its correctness check included in every run.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${COUNTIQ_PROJECT:-countiq}"
SUBNET="${COUNTIQ_SUBNET:-172.28.18}"
DIR="${COUNTIQ_CLUSTER_DIR:-$PWD/target/cluster/$PROJECT}"
IMAGE="${COUNTIQ_IMAGE:-countiq:local}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
OWNERS="${OWNERS:-1000}"
BIN=target/release/countiq
SECRET="${COUNTIQ_JWT_SECRET:-$(cat "$DIR/jwt.secret")}"
SINGLE="$PROJECT-bench-single"
SINGLE_IP="$SUBNET.20"
PROXIED="$PROJECT-bench-single-nginx"
PROXIED_IP="$SUBNET.21"
OUT="$(mktemp -d /tmp/countiq-bench-cluster.XXXXXX)"

cleanup() { docker rm -f -v "$SINGLE" "$PROXIED" >/dev/null 2>&1 || true; rm -rf "$OUT/conf"; }
cleanup
trap cleanup EXIT
docker run -d --rm --name "$SINGLE" --network "${PROJECT}_countiq" --ip "$SINGLE_IP" \
    -e COUNTIQ_JWT_SECRET="$SECRET" "$IMAGE" serve >/dev/null
# The same generated proxy configuration, for a one-node "cluster".
mkdir -p "$OUT/conf"
printf '[[node]]\nid = "single"\naddr = "%s:8080"\n' "$SINGLE_IP" >"$OUT/conf/cluster.toml"
"$BIN" cluster proxy-config --cluster "$OUT/conf/cluster.toml" >"$OUT/conf/countiq.conf"
docker run -d --rm --name "$PROXIED" --network "${PROJECT}_countiq" --ip "$PROXIED_IP" \
    -v "$OUT/conf/countiq.conf:/etc/nginx/conf.d/countiq.conf:ro" countiq-nginx:local >/dev/null
until curl -sf "http://$SINGLE_IP:8080/readyz" >/dev/null; do sleep 0.2; done
until curl -sf "http://$PROXIED_IP:8080/readyz" >/dev/null; do sleep 0.2; done

run_load() { # name url round
    COUNTIQ_JWT_SECRET="$SECRET" "$BIN" load --url "$2" --allow-remote --scenario uniform \
        --owners "$OWNERS" --connections "$CONNS" --duration "$DURATION" --json >"$OUT/$1-$3.json"
}
for r in $(seq 1 "$ROUNDS"); do
    run_load single "http://$SINGLE_IP:8080" "$r"
    run_load proxied "http://$PROXIED_IP:8080" "$r"
    run_load cluster "http://$SUBNET.10:8080" "$r"
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for name in ("single", "proxied", "cluster"):
    runs = [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]
    assert all(x["check"]["passed"] for x in runs), f"{name}: a check failed"
    rows[name] = runs
ratio = lambda a, b: [x["requests_per_s"] / y["requests_per_s"] for x, y in zip(rows[a], rows[b])]
print("| target | req/s (median) | p50 µs | p99 µs | runs req/s | non-200 |")
print("|---|---:|---:|---:|---|---:|")
for name, label in (("single", "one node, direct"), ("proxied", "one node behind nginx"), ("cluster", "three nodes behind nginx")):
    runs = rows[name]
    med = lambda k: statistics.median(x["latency_us"][k] for x in runs)
    rps = statistics.median(x["requests_per_s"] for x in runs)
    bad = sum(n for x in runs for s, n in x["by_status"].items() if s != "200")
    print(f"| {label} | {rps:,.0f} | {med('p50'):,.0f} | {med('p99'):,.0f} | "
          + ", ".join(f"{x['requests_per_s']:,.0f}" for x in runs) + f" | {bad} |")
for a, b in (("cluster", "single"), ("proxied", "single"), ("cluster", "proxied")):
    rs = ratio(a, b)
    print(f"ratio {a}/{b} per round: {', '.join(f'{r:.2f}' for r in rs)}; median {statistics.median(rs):.2f}")
PY
