-- GET one match's metrics; counts non-200 answers.
local result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
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
  result.report(threads, "ok", summary, latency)
end
