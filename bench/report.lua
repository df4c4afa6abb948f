-- ringcache bench: wrk script used for every run of bench/run.sh.
--
-- Without WRK_KEYS (or WRK_KEYS <= 1) wrk sends the URL given on its command
-- line over and over (its fast, static request path).
--
-- With WRK_KEYS=N and WRK_PATH_FMT (a string.format pattern with one %d,
-- e.g. "/api/items/%d?size=1024&max_age=86400") every request picks a key in
-- [0, N) uniformly at random. The N requests are formatted once in init(),
-- so the per-request cost is one random number and a table lookup.
--
-- done() prints one machine-readable line that run.sh parses:
--   BENCH_RESULT rps=<req/s> p50_us=<µs> p99_us=<µs> requests=<n>
--                duration_us=<µs> err_connect=<n> err_read=<n> err_write=<n>
--                err_timeout=<n> non2xx=<n>
-- non2xx is wrk's status error count: responses with a status >= 400
-- (wrk does not count 3xx there; none of the bench URLs produce one).

local keys = tonumber(os.getenv("WRK_KEYS") or "0") or 0
local path_fmt = os.getenv("WRK_PATH_FMT") or "/api/items/%d"

if keys > 1 then
   local prepared = {}
   local thread_seq = 0

   function setup(thread)
      thread_seq = thread_seq + 1
      thread:set("seed", thread_seq)
   end

   function init(args)
      math.randomseed(os.time() + (tonumber(seed) or 0) * 7919)
      for i = 0, keys - 1 do
         prepared[i + 1] = wrk.format("GET", string.format(path_fmt, i))
      end
   end

   function request()
      return prepared[math.random(keys)]
   end
end

function done(summary, latency, requests)
   local secs = summary.duration / 1e6
   local rps = 0
   if secs > 0 then
      rps = summary.requests / secs
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d duration_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d\n",
      rps, latency:percentile(50), latency:percentile(99), summary.requests,
      summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
end
