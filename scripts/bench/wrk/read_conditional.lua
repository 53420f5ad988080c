-- GET one match's metrics with If-None-Match: the 304 path, to set beside read.lua's 200s.
-- The first answer's ETag is sent back on every later request; a changed match answers 200 with
-- a new tag, which is then used. Counts 304s as ok, 200s as refreshed, anything else as failed.
--   wrk -t2 -c50 -d10s -s scripts/bench/wrk/read_conditional.lua http://127.0.0.1:8000 -- /api/matches/ID/metrics
local threads = {}
failed = 0
ok = 0
refreshed = 0
etag = nil

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or "/api/matches/m-1/metrics"
end

function request()
  if etag then return wrk.format("GET", path, { ["If-None-Match"] = etag }) end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status == 304 then
    ok = ok + 1
  elseif status == 200 then
    refreshed = refreshed + 1
    etag = headers["etag"] or headers["ETag"]
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_refreshed, total_failed = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_refreshed = total_refreshed + thread:get("refreshed")
    total_failed = total_failed + thread:get("failed")
  end
  io.write(string.format(
    "RESULT not_modified=%d refreshed=%d failed=%d p50_us=%d p99_us=%d requests=%d\n",
    total_ok, total_refreshed, total_failed, latency:percentile(50), latency:percentile(99),
    summary.requests))
end
