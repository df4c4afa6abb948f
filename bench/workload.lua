-- ringcache bench: wrk script of bench/capacity.sh. One workload per run,
-- chosen by environment variables:
--
--   WRK_MODE=hot   the URL on wrk's command line, over and over (wrk's
--                  static request path)
--   WRK_MODE=zipf  key ranks drawn from a Zipf distribution over WRK_KEYS
--                  keys with exponent ZIPF_S (P(rank k) ~ 1/k^s), from a
--                  generator seeded with ZIPF_SEED, so every server given
--                  the same seed gets the same sequence of keys. Rank k is key k-1
--                  of WRK_PATH_FMT (a string.format pattern with one %d).
--   WRK_MODE=miss  every request a key never asked for before:
--                  WRK_PATH_FMT with one %s, filled with WRK_RUN_ID and a
--                  counter (the run id keeps runs and servers apart).
--
-- done() prints one line that capacity.sh parses:
--   BENCH_RESULT rps=<req/s> p50_us=<µs> p90_us=<µs> p99_us=<µs>
--                requests=<n> duration_us=<µs> err_connect=<n> err_read=<n>
--                err_write=<n> err_timeout=<n> non2xx=<n>
-- non2xx is wrk's status error count (responses with a status >= 400).

local mode = os.getenv("WRK_MODE") or "hot"
local path_fmt = os.getenv("WRK_PATH_FMT") or "/api/items/%d"

if mode == "zipf" then
   local keys = tonumber(os.getenv("WRK_KEYS") or "") or 100000
   local s = tonumber(os.getenv("ZIPF_S") or "") or 0.99
   local seed = tonumber(os.getenv("ZIPF_SEED") or "") or 1
   local cdf = {}
   local prepared = {}

   function init(args)
      -- Cumulative weights, normalised to 1; a request draws u in [0, 1)
      -- and takes the first rank whose cumulative weight exceeds it.
      local total = 0
      for k = 1, keys do
         total = total + 1 / (k ^ s)
         cdf[k] = total
      end
      for k = 1, keys do
         cdf[k] = cdf[k] / total
         prepared[k] = wrk.format("GET", string.format(path_fmt, k - 1))
      end
      cdf[keys] = 1
      math.randomseed(seed)
   end

   function request()
      local u = math.random()
      local lo, hi = 1, keys
      while lo < hi do
         local mid = math.floor((lo + hi) / 2)
         if cdf[mid] > u then
            hi = mid
         else
            lo = mid + 1
         end
      end
      return prepared[lo]
   end
elseif mode == "miss" then
   local run_id = os.getenv("WRK_RUN_ID") or tostring(os.time())
   local n = 0

   function request()
      n = n + 1
      return wrk.format("GET", string.format(path_fmt, run_id .. "-" .. n))
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
      "BENCH_RESULT rps=%.1f p50_us=%d p90_us=%d p99_us=%d requests=%d duration_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d\n",
      rps, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status))
end
