#!/usr/bin/env bash
# Load and soak: `lambdaflow demo` (release build) ingesting its generator's events, first a
# bounded load of the query API and of POST /v1/events/events with wrk while it ingests, then a soak
# that samples, every 30 s, the process's memory (resident, and the allocator's live and
# resident bytes) and open files, the speed layer's lag and retained events, the bytes of
# deduplication's ids (in memory per layer, on disk for both), the view versions, and the
# lake: Delta versions, live files, files and bytes on storage, log files.
#   bash bench/soak.sh [minutes, default 10] [events/s, default 200] [forced run every S seconds, default 900]
# The lake's lifecycle is what is soaked: a nightly batch schedule, so that only the forced
# runs move the watermark; raw retention of 2 days, so that the generator's late events
# (up to 3 days old) land in dates every run expires; vacuum after 10 minutes. Each is an
# ordinary config override and may be set otherwise in the environment. The demo has two
# sources, each fed at the given rate: the memory, speed-layer and lake-size columns cover both,
# the archiver's id bytes, the raw table's files and the view version the shop's (`events`).
# Writes bench/soak.csv, bench/soak.md and bench/soak.svg. Needs wrk (Debian's `wrk`).
# LAMBDAFLOW_BIN names a lambdaflow binary to use instead of building the release one.
# LAMBDAFLOW_SOAK_BROKERS=host:port runs the demo's config against that broker instead (`run`
# and a `gen` per source): the embedded broker keeps up to 5 MB or 100,000 messages of log per
# partition in the process, which the demo's memory columns then include.
# LAMBDAFLOW_SOAK_GRANULARITY=day (with LAMBDAFLOW_SOAK_BROKERS) gives every view of that config
# this granularity. The demo's per-minute views gain groups every minute of the day, and their
# memory with them; at day granularity the groups stop growing within the first cycle, so any
# growth left is not the answer's.
# LAMBDAFLOW_SOAK_OUT names the results' prefix (default bench/soak: .csv, .md, .svg).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
MINUTES="${1:-10}"
RATE="${2:-200}"
FORCE_EVERY="${3:-900}"
OUT="${LAMBDAFLOW_SOAK_OUT:-bench/soak}"
GRANULARITY="${LAMBDAFLOW_SOAK_GRANULARITY:-}"
if [ -n "$GRANULARITY" ] && [ -z "${LAMBDAFLOW_SOAK_BROKERS:-}" ]; then
  echo "LAMBDAFLOW_SOAK_GRANULARITY needs LAMBDAFLOW_SOAK_BROKERS: the demo's views are built in" >&2
  exit 1
fi
export LAMBDAFLOW_BATCH__SCHEDULE="${LAMBDAFLOW_BATCH__SCHEDULE:-0 0 0 * * *}"
export LAMBDAFLOW_RETENTION__RAW="${LAMBDAFLOW_RETENTION__RAW:-2d}"
export LAMBDAFLOW_LAKE__VACUUM_RETENTION="${LAMBDAFLOW_LAKE__VACUUM_RETENTION:-10m}"
PORT="${LAMBDAFLOW_SOAK_PORT:-18480}"
BASE="http://127.0.0.1:$PORT"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

BIN="${LAMBDAFLOW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release -p lambdaflow-serving --bin lambdaflow
  BIN=./target/release/lambdaflow
fi
DATA="$(mktemp -d /tmp/lambdaflow-soak-XXXXXX)"
if [ -z "${LAMBDAFLOW_SOAK_BROKERS:-}" ]; then
  "$BIN" demo --data-dir "$DATA" --listen "127.0.0.1:$PORT" --rate "$RATE" \
    > "$DATA/demo.log" 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
else
  # The demo's config against an external broker: `run` and a `gen` per source, so that the
  # process measured holds no broker log of its own.
  sed -e "s#^brokers = .*#brokers = \"$LAMBDAFLOW_SOAK_BROKERS\"#" \
      -e "s#^uri = .*#uri = \"$DATA/lake\"#" \
      -e "s#^listen = .*#listen = \"127.0.0.1:$PORT\"#" \
      -e "${GRANULARITY:+s#^granularity = .*#granularity = \"$GRANULARITY\"#}" \
      common/src/demo.toml > "$DATA/soak.toml"
  "$BIN" run --config "$DATA/soak.toml" > "$DATA/run.log" 2>&1 &
  PID=$!
  gens=()
  for shape in "events shop" "pageviews pages"; do
    set -- $shape
    "$BIN" gen --config "$DATA/soak.toml" --source "$1" --shape "$2" --count 1000000000 \
      --rate "$RATE" --duplicates 0.02 --late 0.05 --invalid 0.01 --seed "$RANDOM" \
      > "$DATA/gen-$1.log" 2>&1 &
    gens+=($!)
  done
  trap 'kill $PID ${gens[*]} 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
fi
until curl -fsS "$BASE/readyz" >/dev/null 2>&1; do sleep 1; done
curl -fsS -X POST -H 'content-type: application/json' "$BASE/v1/batch/runs" >/dev/null
sleep 5

# The sum of every series of metric $1; `series` reads one exact series.
metric() { curl -fsS "$BASE/metrics" | awk -v m="$1" '{ n = $1; sub(/\{.*/, "", n) } n == m { s += $2 } END { printf "%d", s }'; }
series() { curl -fsS "$BASE/metrics" | awk -v m="$1" '$1 == m { printf "%d", $2 }'; }
lake_files() { find "$DATA/lake/$1" -type f 2>/dev/null | wc -l; }
lake_bytes() { du -sb "$DATA/lake/$1" 2>/dev/null | cut -f1; }
log_files() { ls "$DATA/lake/$1/_delta_log" 2>/dev/null | wc -l; }
delta_version() { ls "$DATA/lake/$1/_delta_log" 2>/dev/null | grep -c '\.json$' || true; }

{
  echo "## Load while ingesting ($RATE events/s from each of the two generators)"
  echo
  echo '| load | requests/s | latency p50 | latency p99 | errors |'
  echo '| --- | --- | --- | --- | --- |'
} > "$OUT.md"
load() {
  local name="$1"; shift
  local out
  out="$(wrk --latency "$@")"
  local rps p50 p99 errors
  rps="$(awk '/Requests\/sec/ { print $2 }' <<<"$out")"
  p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
  p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  errors="$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')"
  echo "| $name | $rps | $p50 | $p99 | ${errors:-none} |" >> "$OUT.md"
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
  return wrk.format("POST", "/v1/events/events", {["Content-Type"] = "application/json"}, body)
end
LUA
load "POST /v1/events/events, one event per request" -t2 -c16 -d20s -s "$DATA/post.lua" "$BASE"

echo "minute,rss_kib,rss_anon_kib,rss_file_kib,allocated_kib,jemalloc_resident_kib,open_files,lag,retained,retained_bytes,speed_id_bytes,archiver_id_bytes,id_disk_bytes,messages,view_version,raw_delta_versions,raw_live_files,raw_files,raw_log_files,view_files,lake_bytes,expired_dates,vacuumed_files,batch_groups,speed_state_bytes" > "$OUT.csv"
samples=$(( MINUTES * 2 ))
started=$SECONDS
forced=$SECONDS
for i in $(seq 0 "$samples"); do
  if [ $(( SECONDS - forced )) -ge "$FORCE_EVERY" ]; then
    curl -fsS -X POST -H 'content-type: application/json' "$BASE/v1/batch/runs" >/dev/null || true
    forced=$SECONDS
  fi
  rss="$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")"
  # The resident set's two parts: anonymous memory (the heap and stacks) and the pages of
  # mapped files (the binary's code, loaded as code paths first run).
  anon="$(awk '/RssAnon/ { print $2 }' "/proc/$PID/status")"
  file="$(awk '/RssFile/ { print $2 }' "/proc/$PID/status")"
  fds="$(ls "/proc/$PID/fd" | wc -l)"
  echo "$(awk -v s="$(( SECONDS - started ))" 'BEGIN { printf "%.1f", s / 60 }'),$rss,$anon,$file,$(( $(metric lambdaflow_memory_allocated_bytes) / 1024 )),$(( $(metric lambdaflow_memory_resident_bytes) / 1024 )),$fds,$(metric lambdaflow_speed_lag_messages),$(metric lambdaflow_speed_retained_events),$(metric lambdaflow_speed_retained_bytes),$(metric lambdaflow_speed_dedup_id_bytes),$(series 'lambdaflow_archiver_dedup_id_bytes{place="memory",source="events"}'),$(( $(metric lambdaflow_speed_dedup_id_disk_bytes) + $(series 'lambdaflow_archiver_dedup_id_bytes{place="disk",source="events"}') )),$(metric lambdaflow_speed_messages_total),$(series 'lambdaflow_view_batch_version{view="sales_by_country"}'),$(delta_version raw/events),$(series 'lambdaflow_archiver_table{measure="files",source="events",table="raw"}'),$(lake_files raw),$(log_files raw/events),$(lake_files views),$(lake_bytes ""),$(metric lambdaflow_lake_expired_dates_total),$(metric lambdaflow_lake_vacuumed_files_total),$(metric lambdaflow_view_batch_groups),$(metric lambdaflow_speed_state_bytes)" >> "$OUT.csv"
  [ "$i" -lt "$samples" ] && sleep 30
done

{
  echo
  echo "## Soak: $MINUTES minutes at $RATE events/s to each of the demo's two sources, one sample every 30 s ($OUT.csv)"
  echo
  echo "Batch schedule \`$LAMBDAFLOW_BATCH__SCHEDULE\`, a forced run every $FORCE_EVERY s, raw retention"
  echo "$LAMBDAFLOW_RETENTION__RAW, vacuum retention $LAMBDAFLOW_LAKE__VACUUM_RETENTION${GRANULARITY:+, every view at $GRANULARITY granularity}. Plot: $OUT.svg."
  echo
  "${LAMBDAFLOW_PYTHON:-python3}" - "$OUT.csv" "$OUT.svg" "$FORCE_EVERY" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cycle_seconds = float(sys.argv[3])
half = rows[len(rows) // 2:]
keys = ["rss_kib", "rss_anon_kib", "rss_file_kib", "allocated_kib", "jemalloc_resident_kib", "open_files", "lag", "retained", "retained_bytes",
        "speed_id_bytes", "archiver_id_bytes", "id_disk_bytes", "messages", "view_version",
        "raw_delta_versions", "raw_live_files", "raw_files", "raw_log_files", "view_files",
        "lake_bytes", "expired_dates", "vacuumed_files", "batch_groups", "speed_state_bytes"]
print("| series | first | middle | last | max | second half trend |")
print("| --- | --- | --- | --- | --- | --- |")
for key in keys:
    values = [int(float(r[key] or 0)) for r in rows]
    tail = [int(float(r[key] or 0)) for r in half]
    trend = (tail[-1] - tail[0]) / max(1, abs(tail[0]))
    print(f"| {key} | {values[0]} | {values[len(values) // 2]} | {values[-1]} | {max(values)} | {trend:+.1%} |")

# Per cycle of forced runs: the resident set's low and peak, the batch groups the views hold
# at its end (memory that follows the answer's size, not the events'), and the lake's bytes,
# files and log files on storage, which fall at each run's vacuum. A last cycle cut short by
# the end of the soak is marked partial: its low and peak are of a few samples.
cycles = {}
for r in rows:
    cycles.setdefault(int(float(r["minute"]) * 60 // cycle_seconds) + 1, []).append(r)
full = max(len(part) for part in cycles.values())
print()
print("| cycle | RSS low / peak, MB | anonymous RSS low / peak, MB | file-backed RSS at its end, MB | allocated low / peak, MB "
      "| batch groups at its end | dedup ids in memory, speed / archiver, MB | bytes on storage low / peak, MB "
      "| raw files on storage low / peak | raw/events log files low / peak |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for n, part in sorted(cycles.items()):
    low_peak = lambda key, scale=1024: (f"{min(int(float(r[key] or 0)) for r in part) / scale:.0f} / "
                                        f"{max(int(float(r[key] or 0)) for r in part) / scale:.0f}")
    last = part[-1]
    label = f"{n}" if len(part) * 2 >= full else f"{n} (partial, {len(part)} samples)"
    print(f"| {label} | {low_peak('rss_kib')} | {low_peak('rss_anon_kib')} | {int(last['rss_file_kib']) / 1024:.0f} "
          f"| {low_peak('allocated_kib')} | {last['batch_groups']} "
          f"| {int(last['speed_id_bytes']) / 2**20:.1f} / {int(last['archiver_id_bytes']) / 2**20:.1f} "
          f"| {low_peak('lake_bytes', 2**20)} | {low_peak('raw_files', 1)} | {low_peak('raw_log_files', 1)} |")

# Each plotted series relative to its own maximum, against minutes.
plotted = {"rss_kib": "#1f77b4", "rss_anon_kib": "#8c564b", "allocated_kib": "#17becf", "lake_bytes": "#d62728", "raw_live_files": "#2ca02c",
           "raw_files": "#9467bd", "raw_log_files": "#ff7f0e"}
width, height, pad = 720, 360, 40
minutes = [float(r["minute"]) for r in rows]
span = max(minutes[-1], 1e-9)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height + 60}" fill="white"/>',
       f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
       f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
       f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">minutes</text>',
       f'<text x="{pad}" y="{pad - 10}">each series / its maximum</text>']
for n, (key, color) in enumerate(plotted.items()):
    values = [float(r[key] or 0) for r in rows]
    top = max(max(values), 1e-9)
    points = " ".join(
        f"{pad + (m / span) * (width - 2 * pad):.1f},{height - pad - (v / top) * (height - 2 * pad):.1f}"
        for m, v in zip(minutes, values))
    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
    out.append(f'<text x="{pad + (n % 3) * 220}" y="{height + 15 + (n // 3) * 18}" fill="{color}">{key} (max {int(top)})</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
} >> "$OUT.md"
cat "$OUT.md"
