-- wrk script: POST one small OpenAI Responses API request (the same prompt as chat.lua). env: MODEL, STREAM=1, KEY.
-- Prints a machine-readable line: BENCH {"requests", "rps", "p50_ms", "p90_ms", "p99_ms", "errors", "non2xx"}.
local model = os.getenv("MODEL") or "bench"
local stream = os.getenv("STREAM") == "1"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("KEY") or "sk-bench")
wrk.body = '{"model":"' .. model .. '","instructions":"You are terse.",'
  .. '"input":"Say hello in five words.","max_output_tokens":16,"temperature":0,"store":false'
  .. (stream and ',"stream":true' or '') .. '}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"rps":%.2f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
