-- POST unique events spread over 20 matches; counts 202s and other statuses per thread.
local result = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "result.lua")
local threads = {}
counter = 0
thread_id = thread_id or 0
accepted = 0
failed = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  run_id = args[1] or "run"
  api_key = args[2] or ""
  id_prefix = args[3] or "00000000"
end

local types = {"goal", "corner", "foul", "yellow_card", "substitution", "offside", "free_kick"}

function request()
  counter = counter + 1
  local match = counter % 20
  local minute = counter % 90
  local body = string.format(
    '{"eventId":"%s-%04x-4000-8000-%012x","matchId":"bench-%s-%d","eventType":"%s",' ..
    '"timestamp":"2025-05-10T18:%02d:%02dZ","teamId":"team-%d","playerId":"p-%d"}',
    id_prefix, thread_id, counter, run_id, match, types[(counter % #types) + 1],
    minute % 60, counter % 60, counter % 2, counter % 23)
  return wrk.format("POST", "/api/events",
    {["Content-Type"] = "application/json", ["X-API-Key"] = api_key}, body)
end

function response(status, headers, body)
  if status == 202 then accepted = accepted + 1 else failed = failed + 1 end
end

function done(summary, latency, requests)
  result.report(threads, "accepted", summary, latency)
end
