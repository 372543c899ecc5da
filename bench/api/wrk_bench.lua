-- wrk script for bench/api/run.sh. Arguments after `--`:
--   get                          the URL as is (GET one VM, LIST a namespace)
--   post TEMPLATE NAMESPACE RUN  POST a distinct VM per request: TEMPLATE (vm-template.json)
--                                with __NAME__ = RUN-<thread>-<n>, __NAMESPACE__ = NAMESPACE
--   etcd TEMPLATE NAMESPACE RUN  the same JSON bytes as etcd v3 gateway puts
--                                (POST /v3/kv/put, base64 key and value), a distinct key each
-- done() prints one line "BENCH_JSON {...}" (requests, rps, latency percentiles in us, errors).

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local b64 = {}
for i = 1, 64 do b64[i - 1] = b64chars:sub(i, i) end

local function base64(s)
  local out = {}
  local n = #s
  for i = 1, n, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(v / 262144) % 64
    local c2 = math.floor(v / 4096) % 64
    local c3 = math.floor(v / 64) % 64
    local c4 = v % 64
    out[#out + 1] = b64[c1] .. b64[c2] .. (b and b64[c3] or "=") .. (c and b64[c4] or "=")
  end
  return table.concat(out)
end

function init(args)
  mode = args[1] or "get"
  counter = 0
  if mode ~= "get" then
    local f = assert(io.open(args[2], "rb"))
    template = f:read("*a"):gsub("%s+$", "")
    f:close()
    namespace = args[3]
    run = args[4]
    template = template:gsub("__NAMESPACE__", namespace)
  end
end

function request()
  if mode == "get" then
    return wrk.request()
  end
  counter = counter + 1
  local name = run .. "-" .. id .. "-" .. counter
  local body = template:gsub("__NAME__", name)
  local headers = { ["Content-Type"] = "application/json" }
  if mode == "post" then
    return wrk.format("POST", nil, headers, body)
  end
  -- etcd: the key as kube-apiserver would name it.
  local key = "/registry/kubevirt.io/virtualmachines/" .. namespace .. "/" .. name
  local put = '{"key":"' .. base64(key) .. '","value":"' .. base64(body) .. '"}'
  return wrk.format("POST", nil, headers, put)
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
