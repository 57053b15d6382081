-- wrk script: POSTs unique, seed-shaped weather tweets and reports JSON on exit.
--
--   wrk -t1 -c64 -d25s -s loadtest/tweets.lua http://127.0.0.1:8000/input -- BATCH RATE TAG STOP
--
-- BATCH  tweets per request (1 = one JSON object, >1 = a JSON array)      default 1
-- RATE   requests/s per wrk thread, 0 = as fast as possible (closed loop)  default 0
--        (open-loop pacing: each request claims the next slot of a fixed schedule and
--        delay() waits for it; if every connection is busy the schedule slips, i.e. the
--        client falls back to closed loop and the achieved rate shows it)
-- TAG    prefix of every tweet id, unique per run              default "wrk<unix time>"
-- STOP   CLOCK_MONOTONIC time in ms (Python's time.monotonic() * 1000) after which no
--        new request is sent, 0 = never                                  default 0
--        Run wrk with -d a few seconds beyond STOP: requests in flight at STOP then get
--        their answers and are counted, so "accepted" is exact (wrk drops in-flight
--        requests at the end of -d, which the server may still have accepted).
--
-- On exit it prints one line "WRK_JSON {...}" with requests, statuses, accepted tweets
-- (202 responses x BATCH) and the latency distribution in microseconds.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local COUNTRIES = { -- a rough population-weighted Central-American mix
  "GT", "GT", "GT", "GT", "HN", "HN", "HN", "SV", "SV", "NI", "NI",
  "CR", "CR", "PA", "PA", "BZ",
}
local WEATHERS = { "Lluvioso", "Nubloso", "Soleado" }
local PHRASES = {
  "Está lloviendo fuerte en la capital",
  "Amaneció nublado y fresco",
  "Qué calor, sol a pleno mediodía",
  "Tormenta eléctrica por la tarde",
  "Cielo despejado sobre el lago",
  "Llovizna y neblina en la montaña",
}

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  batch = tonumber(args[1] or "1") or 1
  rate = tonumber(args[2] or "0") or 0
  tag = args[3] or ("wrk" .. os.time()) -- ids must not repeat across runs: the stores dedupe them
  stop_ms = tonumber(args[4] or "0") or 0
  counter = 0
  accepted = 0
  responses_202 = 0
  other_status = 0
  interval_ms = rate > 0 and 1000 / rate or 0
  next_slot = nil
  math.randomseed(os.time() + thread_index * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function tweet()
  counter = counter + 1
  local id = string.format("%s-%d-%d", tag, thread_index, counter)
  local country = COUNTRIES[math.random(#COUNTRIES)]
  local weather = WEATHERS[math.random(#WEATHERS)]
  local phrase = PHRASES[math.random(#PHRASES)]
  return string.format(
    '{"id":"%s","description":"%s #%d","country":"%s","weather":"%s"}',
    id, phrase, counter, country, weather
  )
end

function request()
  local body
  if batch <= 1 then
    body = tweet()
  else
    local items = {}
    for i = 1, batch do
      items[i] = tweet()
    end
    body = "[" .. table.concat(items, ",") .. "]"
  end
  return wrk.format(nil, nil, nil, body)
end

function delay()
  if stop_ms <= 0 and interval_ms <= 0 then
    return 0
  end
  local t = now_ms()
  if stop_ms > 0 and t >= stop_ms then
    return 3600000 -- sending window over: idle until wrk's -d ends
  end
  if interval_ms <= 0 then
    return 0
  end
  if next_slot == nil or next_slot < t - 1000 then
    next_slot = t -- start, or the schedule slipped by more than a second: re-anchor
  end
  local wait = next_slot - t
  next_slot = next_slot + interval_ms
  if wait < 0 then
    return 0
  end
  return math.floor(wait)
end

function response(status, headers, body)
  if status == 202 then
    responses_202 = responses_202 + 1
    accepted = accepted + batch
  else
    other_status = other_status + 1
  end
end

function done(summary, latency, requests)
  local acc, ok, other = 0, 0, 0
  for _, thread in ipairs(threads) do
    acc = acc + (thread:get("accepted") or 0)
    ok = ok + (thread:get("responses_202") or 0)
    other = other + (thread:get("other_status") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"responses_202":%d,' ..
    '"other_status":%d,"accepted":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,' ..
    '"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, ok, other, acc,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max
  ))
end
