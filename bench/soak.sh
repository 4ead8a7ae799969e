#!/usr/bin/env bash
# Load and soak: `lambdaflow demo` (release build) ingesting its generator's events, first a
# bounded load of the query API and of POST /v1/events with wrk while it ingests, then a soak
# that samples, every 30 s, the process's memory and open files, the speed layer's lag and
# retained events, the view versions, and the lake's Delta versions and file counts (live in
# the raw table's snapshot, and on disk, where compacted files stay until a VACUUM).
#   bash bench/soak.sh [minutes, default 10] [events/s, default 200]
# Writes bench/soak.csv and bench/soak.md. Needs wrk (Debian's `wrk`). LAMBDAFLOW_BIN names a
# lambdaflow binary to use instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
MINUTES="${1:-10}"
RATE="${2:-200}"
PORT="${LAMBDAFLOW_SOAK_PORT:-18480}"
BASE="http://127.0.0.1:$PORT"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

BIN="${LAMBDAFLOW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release -p lambdaflow-serving --bin lambdaflow
  BIN=./target/release/lambdaflow
fi
DATA="$(mktemp -d /tmp/lambdaflow-soak-XXXXXX)"
"$BIN" demo --data-dir "$DATA" --listen "127.0.0.1:$PORT" --rate "$RATE" \
  > "$DATA/demo.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
until curl -fsS "$BASE/readyz" >/dev/null 2>&1; do sleep 1; done
curl -fsS -X POST "$BASE/v1/batch/runs" >/dev/null
sleep 5

# The sum of every series of metric $1; `series` reads one exact series.
metric() { curl -fsS "$BASE/metrics" | awk -v m="$1" '{ n = $1; sub(/\{.*/, "", n) } n == m { s += $2 } END { printf "%d", s }'; }
series() { curl -fsS "$BASE/metrics" | awk -v m="$1" '$1 == m { printf "%d", $2 }'; }
lake_files() { find "$DATA/lake/$1" -type f 2>/dev/null | wc -l; }
delta_version() { ls "$DATA/lake/$1/_delta_log" 2>/dev/null | grep -c '\.json$' || true; }

{
  echo "## Load while ingesting ($RATE events/s from the generator)"
  echo
  echo '| load | requests/s | latency p50 | latency p99 | errors |'
  echo '| --- | --- | --- | --- | --- |'
} > bench/soak.md
load() {
  local name="$1"; shift
  local out
  out="$(wrk --latency "$@")"
  local rps p50 p99 errors
  rps="$(awk '/Requests\/sec/ { print $2 }' <<<"$out")"
  p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
  p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  errors="$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')"
  echo "| $name | $rps | $p50 | $p99 | ${errors:-none} |" >> bench/soak.md
}
load "GET query: sales_by_country by day and country" -t2 -c16 -d20s \
  "$BASE/v1/views/sales_by_country/query?granularity=day&group_by=country"
cat > "$DATA/post.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local id = "load-" .. counter .. "-" .. math.random(1, 1000000000)
  local body = '[{"event_id":"' .. id .. '","event_time":"' .. os.date("!%Y-%m-%dT%H:%M:%SZ") ..
    '","type":"view","user_id":"u' .. (counter % 500) .. '","country":"kr"}]'
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end
LUA
load "POST /v1/events, one event per request" -t2 -c16 -d20s -s "$DATA/post.lua" "$BASE"

echo "minute,rss_kib,open_files,lag,retained,retained_bytes,messages,view_version,raw_delta_versions,raw_live_files,raw_files,view_files" > bench/soak.csv
samples=$(( MINUTES * 2 ))
for i in $(seq 0 "$samples"); do
  rss="$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")"
  fds="$(ls "/proc/$PID/fd" | wc -l)"
  echo "$(awk -v i="$i" 'BEGIN { printf "%.1f", i / 2 }'),$rss,$fds,$(metric lambdaflow_speed_lag_messages),$(metric lambdaflow_speed_retained_events),$(metric lambdaflow_speed_retained_bytes),$(metric lambdaflow_speed_messages_total),$(series 'lambdaflow_view_batch_version{view="sales_by_country"}'),$(delta_version raw/events),$(series 'lambdaflow_archiver_table{measure="files",table="raw"}'),$(lake_files raw),$(lake_files views)" >> bench/soak.csv
  [ "$i" -lt "$samples" ] && sleep 30
done

{
  echo
  echo "## Soak: $MINUTES minutes at $RATE events/s, one sample every 30 s (bench/soak.csv)"
  echo
  "${LAMBDAFLOW_PYTHON:-python3}" - bench/soak.csv <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
half = rows[len(rows) // 2:]
print("| series | first | middle | last | max | second half trend |")
print("| --- | --- | --- | --- | --- | --- |")
for key in ["rss_kib", "open_files", "lag", "retained", "retained_bytes", "messages", "view_version", "raw_delta_versions", "raw_live_files", "raw_files", "view_files"]:
    values = [int(float(r[key])) for r in rows]
    tail = [int(float(r[key])) for r in half]
    trend = (tail[-1] - tail[0]) / max(1, abs(tail[0]))
    print(f"| {key} | {values[0]} | {values[len(values) // 2]} | {values[-1]} | {max(values)} | {trend:+.1%} |")
PY
} >> bench/soak.md
cat bench/soak.md
