-- wrk script: mixed traffic at a set pace. Each line of the file is
-- "PATH<TAB>JSON BODY"; requests rotate through the lines (many users, all
-- three endpoints), and each connection waits DELAY_MS between requests, so
-- the rate is about connections × 1000 / DELAY_MS per second.
--   wrk -s bench/mixed.lua URL -- LINES_FILE DELAY_MS
local lines = {}
local i = 0
local pause = 0

function init(args)
  for line in io.lines(args[1]) do
    local path, body = line:match("^([^\t]+)\t(.*)$")
    lines[#lines + 1] = { path, body }
  end
  pause = tonumber(args[2] or "0")
  i = math.random(#lines)
end

function delay()
  return pause
end

function request()
  i = i % #lines + 1
  return wrk.format("POST", lines[i][1], { ["Content-Type"] = "application/json" }, lines[i][2])
end
