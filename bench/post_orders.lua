-- wrk script for `python -m bench`: POST /orders with a unique orderId per request.
-- env: BENCH_PREFIX (orderId prefix), BENCH_PRODUCTS (spread over BENCH-P0..N-1).
-- At the end prints one line "BENCH-JSON {...}" with status counts and latency; `generated`
-- counts requests built, so generated - requests were in flight (unanswered) when wrk stopped.

local threads = {}
local prefix = os.getenv("BENCH_PREFIX") or "bench"
local products = tonumber(os.getenv("BENCH_PRODUCTS") or "8")

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"orderId":"%s-%d-%d","userId":"bench-user","items":[{"productId":"BENCH-P%d","quantity":1}]}',
    prefix, tid, counter, counter % products)
  return wrk.format("POST", "/orders", nil, body)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  local generated = 0
  for _, thread in ipairs(threads) do
    generated = generated + thread:get("counter")
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"duration_us":%d,"requests":%d,"generated":%d,"status":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_ms":{"50":%.3f,"99":%.3f,"max":%.3f}}\n',
    summary.duration, summary.requests, generated, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
