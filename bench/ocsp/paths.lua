-- wrk script: GET requests for the paths listed in a file (one per line), either in turn
-- (`cycle`, the hit sets) or uniformly at random (`random`, the miss runs).
--
--   wrk -t1 -c64 -d15s --latency -s paths.lua http://127.0.0.1:PORT -- LIST cycle|random [MARKER]
--
-- Requests are formatted once, in init (before wrk starts its clock). MARKER, if given, is a
-- file created once init is done, so that run.sh knows when the load starts. `done` prints one
-- `WRKJSON {...}` line with the figures run.sh records (latency in µs).

local reqs, n, i, mode = {}, 0, 0, "cycle"

function init(args)
  local list = assert(args[1], "usage: -- LIST cycle|random [MARKER]")
  mode = args[2] or "cycle"
  local f = assert(io.open(list, "r"), "cannot open " .. list)
  for line in f:lines() do
    if #line > 0 then
      n = n + 1
      reqs[n] = wrk.format("GET", line)
    end
  end
  f:close()
  assert(n > 0, "no paths in " .. list)
  math.randomseed(os.time())
  i = math.random(n) - 1
  if args[3] then
    local m = assert(io.open(args[3], "w"))
    m:write(tostring(n), "\n")
    m:close()
  end
end

function request()
  if mode == "random" then
    return reqs[math.random(n)]
  end
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"rps":%.1f,"bytes":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6), summary.bytes,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
