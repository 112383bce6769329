-- GCRA (generic cell rate algorithm) for one bucket, in one round trip.
-- KEYS[1]  the bucket: its value is the theoretical arrival time (TAT) in
--          microseconds of Redis's clock; it expires when the bucket is full.
-- ARGV[1]  emission interval: microseconds per unit of quota (integer)
-- ARGV[2]  burst: units the bucket holds when full
-- ARGV[3]  cost: units this request takes; 0 only reads the state
-- ARGV[4]  optional: "now" in microseconds, for tests only; production calls
--          leave it out and the script reads Redis's own TIME, so the
--          clocks of the clients never matter.
-- Reply: {allowed (0|1), remaining units, reset µs (time until full),
--         retry-after µs (0 when allowed)}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] then
	now = tonumber(ARGV[4])
else
	local t = redis.call('TIME')
	now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
	tat = now
end
local new_tat = tat + interval * cost
local wait = new_tat - tolerance - now
if wait > 0 then
	-- Denied: nothing is written.
	return {0, math.floor((tolerance - (tat - now)) / interval), tat - now, wait}
end
if cost > 0 then
	redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0}
