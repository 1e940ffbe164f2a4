#!/usr/bin/env bash
# Refreshes prometheus/exported-metrics.txt from a running dev stack (hsm-config/dev/run.sh):
# the metric families each process serves on /metrics (from their `# TYPE` lines, so families
# without a sample yet count too) and the bucket bounds of every histogram, as Prometheus stores
# them. check.sh compares the alert rules and the dashboard with this list, and this list with
# the code. Run it after adding or renaming a metric, with the stack up:
#   hsm-config/dev/run.sh &   # then
#   hsm-config/deploy/scrape-metrics.sh [job=URL ...]
set -euo pipefail
cd "$(dirname "$0")"
out=prometheus/exported-metrics.txt
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(
    hsmgate-gateway=http://127.0.0.1:9464/metrics
    hsmgate-ocsp=http://127.0.0.1:9465/metrics
    hsmgate-presigner=http://127.0.0.1:9467/metrics
    hsmgate-crl=http://127.0.0.1:9468/metrics
    hsmgate-acme=http://127.0.0.1:9466/metrics
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "${targets[@]}"; do
    job=${t%%=*} url=${t#*=}
    curl -fsS --max-time 5 "$url" > "$tmp/$job.txt" || { echo "cannot scrape $job at $url" >&2; exit 1; }
done
python3 - "$tmp" "${targets[@]}" > "$tmp/out" <<'PY'
import re, sys
tmp, targets = sys.argv[1], sys.argv[2:]
print("# Metric families the hsmgate processes export: `<job> <family> <type> [le=<bucket bounds>]`.")
print("# Written by hsm-config/deploy/scrape-metrics.sh from a running dev stack; do not edit by hand.")
for t in targets:
    job = t.split("=", 1)[0]
    text = open(f"{tmp}/{job}.txt").read()
    types, les = {}, {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            types[m.group(1)] = m.group(2)
            continue
        m = re.match(r'(\S+)_bucket\{(?:.*,)?le="([^"]+)"', line)
        if m:
            les.setdefault(m.group(1), [])
            if m.group(2) not in les[m.group(1)]:
                les[m.group(1)].append(m.group(2))
    for family in sorted(types):
        extra = f" le={','.join(les[family])}" if family in les else ""
        print(f"{job} {family} {types[family]}{extra}")
PY
mv "$tmp/out" "$out"
echo "wrote $out: $(grep -vc '^#' "$out") families"
