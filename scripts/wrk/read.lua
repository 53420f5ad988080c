-- GET one match's metrics; counts non-200 answers.
local threads = {}
failed = 0
ok = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or "/api/matches/m-1/metrics"
end

function request()
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else failed = failed + 1 end
end

function done(summary, latency, requests)
  local total_ok, total_failed = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_failed = total_failed + thread:get("failed")
  end
  io.write(string.format("RESULT accepted=%d failed=%d p50_us=%d p99_us=%d requests=%d\n",
    total_ok, total_failed, latency:percentile(50), latency:percentile(99), summary.requests))
end
