-- wrk script: PATCH <url path> with a JSON body {"delta": d}, d random in [-1, 1],
-- and, when the environment variable BENCH_TOKEN is set, an
-- "Authorization: Bearer $BENCH_TOKEN" header (CountIQ needs it; the stateless
-- axum ceiling ignores it, so both get the same request bytes).
-- Prints a machine-readable line at the end:
--   WRKRESULT requests=.. duration_s=.. rps=.. lat_avg_ms=.. p50_ms=.. p99_ms=.. non2xx=.. errors=..
wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local bodies = { '{"delta":-1}', '{"delta":0}', '{"delta":1}' }
local reqs = {}
for i = 1, 3 do reqs[i] = wrk.format(nil, nil, nil, bodies[i]) end

init = function(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)) end

request = function()
  return reqs[math.random(1, 3)]
end

done = function(summary, latency, requests)
  local errs = summary.errors
  local sock = errs.connect + errs.read + errs.write + errs.timeout
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRKRESULT requests=%d duration_s=%.2f rps=%.1f lat_avg_ms=%.3f p50_ms=%.3f p99_ms=%.3f non2xx=%d errors=%d\n",
    summary.requests, secs, summary.requests / secs, latency.mean / 1000,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errs.status, sock))
end
