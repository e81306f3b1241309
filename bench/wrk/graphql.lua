-- wrk script for every benchmark scenario: POSTs a GraphQL body built by bench/scenarios.py
-- and counts the outcomes wrk itself does not see (GraphQL errors, refusals as data).
--
-- Environment (set by the harness):
--   BENCH_BODY      file holding the JSON body template
--   BENCH_HEADERS   file of extra "Name: value" header lines (may be empty)
--   BENCH_VALUES    file of values for @@VALUE@@, one per line (may be empty)
--   BENCH_REJECTED  substring of a body that means "refused as data" (may be empty)
--   BENCH_RUN       a token unique to this run, part of every @@KEY@@
--
-- done() prints one line "BENCH_RESULT {json}" for the harness.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_index", counter)
  table.insert(threads, thread)
end

local function read_file(path)
  if path == nil or path == "" then return "" end
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

local template, values, value_count, position, rejected_marker, run_token

function init(args)
  template = read_file(os.getenv("BENCH_BODY"))
  values = {}
  for line in read_file(os.getenv("BENCH_VALUES")):gmatch("[^\n]+") do
    table.insert(values, line)
  end
  value_count = #values
  -- Each thread starts at its own offset so threads do not send the same values in step.
  position = ((thread_index or 1) - 1) * 7919
  for line in read_file(os.getenv("BENCH_HEADERS")):gmatch("[^\n]+") do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then wrk.headers[name] = value end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  rejected_marker = os.getenv("BENCH_REJECTED") or ""
  run_token = (os.getenv("BENCH_RUN") or "run") .. "-" .. tostring(thread_index or 1)
  graphql_errors = 0
  rejected = 0
  responses = 0
  sample = ""
end

local sent = 0

function request()
  sent = sent + 1
  local body = template
  if value_count > 0 then
    position = position + 1
    body = body:gsub("@@VALUE@@", values[(position % value_count) + 1], 1)
  end
  body = body:gsub("@@KEY@@", run_token .. "-" .. tostring(sent))
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 or body:find('"errors"', 1, true) then
    if status == 200 then graphql_errors = graphql_errors + 1 end
    if sample == "" then sample = tostring(status) .. " " .. body:sub(1, 400) end
  elseif rejected_marker ~= "" and body:find(rejected_marker, 1, true) then
    rejected = rejected + 1
  end
end

local function json_string(text)
  text = text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end)
  return '"' .. text .. '"'
end

function done(summary, latency, requests)
  local graphql, refused, sample_text = 0, 0, ""
  for _, thread in ipairs(threads) do
    graphql = graphql + (thread:get("graphql_errors") or 0)
    refused = refused + (thread:get("rejected") or 0)
    local s = thread:get("sample") or ""
    if sample_text == "" then sample_text = s end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "non_2xx": %d, "socket_errors": %d, "graphql_errors": %d, ' ..
    '"rejected": %d, "sample": %s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout, graphql, refused,
    json_string(sample_text)))
end
