-- wrk script: POST one JSON body per line of a file, rotating through them, so
-- the server sees many different users rather than one cached request.
--   wrk -s bench/post-bodies.lua URL -- BODIES_FILE
local bodies = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  -- Each wrk thread starts at a different place in the list.
  i = math.random(#bodies)
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, bodies[i])
end

-- The 95th percentile too (wrk's --latency table stops at 50/75/90/99).
function done(summary, latency, requests)
  io.write(string.format("p95 %.2fms\n", latency:percentile(95) / 1000))
end
