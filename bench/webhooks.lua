-- wrk script: POST a Ready webhook with a task id unique across threads and requests.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  secret = os.getenv("BENCH_SECRET")
  run = os.getenv("BENCH_RUN") or "r"
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"id":"%s-%d-%d","status":"Ready","result":{"sample":"https://delivery-eu1.bfl.ai/results/%d.jpeg?se=2030-01-01T00%%3A00%%3A00Z&sp=r&sig=abc","prompt":"a cat","seed":42}}',
    run, tid, counter, counter)
  return wrk.format("POST", "/webhooks/bfl",
    {["Content-Type"] = "application/json", ["X-Webhook-Secret"] = secret}, body)
end
