#!/usr/bin/env bash
# Property-based testing of the HTTP API from its own OpenAPI document with
# schemathesis (PyPI): it generates valid and invalid requests for every
# operation and checks that the server never answers 5xx and that every
# response (status, content type, headers, body) matches the document.
#
# Installs schemathesis into target/schemathesis-venv on first use (PyPI);
# starts its own server on a free loopback port with a temp data dir;
# stops it at exit. Knob: SCHEMATHESIS_EXAMPLES per operation (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SCHEMATHESIS_VENV:-target/schemathesis-venv}"
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis>=4,<5"
fi

cargo build -q --bin countiq
BIN="target/debug/countiq"
DIR="$(mktemp -d /tmp/countiq-schemathesis-XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export COUNTIQ_JWT_SECRET="schemathesis-secret-0123456789abcdef0123"
"$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$DIR/data" >"$DIR/server.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done
TOKEN="$("$BIN" token --owner schemathesis --data-dir "$DIR/data")"

# GET /events is a stream that never ends (Server-Sent Events): a
# request/response fuzzer would wait out its timeout on every case.
# tests/events.rs and tests/openapi.rs cover it instead.
"$VENV/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
  --exclude-path /events \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" \
  --request-timeout 10 \
  --seed 1 \
  --no-color
