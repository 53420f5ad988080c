-- Shared by ingest.lua and read.lua: the one RESULT line scripts/bench/wrk.py parses.
local result = {}

-- Sums each thread's `ok_name` and `failed` counters and prints them with wrk's percentiles.
function result.report(threads, ok_name, summary, latency)
  local total_ok, total_failed = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get(ok_name)
    total_failed = total_failed + thread:get("failed")
  end
  io.write(string.format("RESULT accepted=%d failed=%d p50_us=%d p99_us=%d requests=%d\n",
    total_ok, total_failed, latency:percentile(50), latency:percentile(99), summary.requests))
end

return result
