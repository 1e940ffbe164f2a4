#!/usr/bin/env bash
# Checks the deployment files, offline (no network, no running stack); exits non-zero at the
# first failing check and says which:
#   1. promtool check config/rules   prometheus.yml and alerts.yml parse and their PromQL is valid
#   2. promtool test rules           alerts.test.yml: a firing and a quiet case for every alert
#   3. every alert has both           (this script: alert names against the test file)
#   4. metric names                  alerts.yml and grafana/hsmgate.json name only metrics the
#                                    processes export (prometheus/exported-metrics.txt, a scrape
#                                    of the dev stack, + event-metrics.txt), and those are
#                                    registered in the Rust code (check_metric_names.py)
#      and the dashboard's queries are valid PromQL (promtool, as recording rules)
#   5. systemd-analyze verify        the units in systemd/. They start /usr/local/bin/...,
#                                    which CI does not have: copies whose ExecStart/ExecReload
#                                    point at the built binaries (target/debug, else
#                                    target/release; /bin/true for any not built, said below)
#                                    are verified; any warning fails the check, as
#                                    systemd-analyze itself exits 0 on unknown keys and bad values;
#                                    and `systemd-analyze security --offline` scores each <= 2.0.
#   6. with --e2e: e2e-hsm-alert.sh   a real Prometheus scrapes a real gateway (loopback, temporary
#                                    directory, its own processes), HSMs are killed, and the HSM
#                                    and datacenter alerts fire (needs the built binaries; ~30 s)
# Needs promtool (Debian: prometheus), python3 with yaml, systemd-analyze (hsm-config/dev/setup.sh).
set -euo pipefail
e2e=0
case "${1:-}" in
    --e2e) e2e=1 ;;
    "") ;;
    *) echo "usage: $0 [--e2e]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

fail() { echo "deploy check FAILED: $*" >&2; exit 1; }
for tool in promtool python3 systemd-analyze; do
    command -v "$tool" >/dev/null || fail "$tool is missing (run hsm-config/dev/setup.sh)"
done

echo "== promtool check config / rules"
promtool check config prometheus/prometheus.yml || fail "promtool check config prometheus/prometheus.yml"
promtool check rules prometheus/alerts.yml || fail "promtool check rules prometheus/alerts.yml"

echo "== promtool test rules"
promtool test rules prometheus/alerts.test.yml || fail "promtool test rules prometheus/alerts.test.yml"

echo "== every alert has a firing and a quiet test case"
python3 - prometheus/alerts.yml prometheus/alerts.test.yml <<'PY' || fail "alert test coverage"
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
tests = yaml.safe_load(open(sys.argv[2]))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
firing, quiet = set(), set()
for t in tests["tests"]:
    for case in t.get("alert_rule_test", []):
        (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
missing = [f"{a}: no {kind} case" for a in alerts for kind, s in (("firing", firing), ("quiet", quiet)) if a not in s]
unknown = sorted((firing | quiet) - set(alerts))
for m in missing:
    print("  " + m, file=sys.stderr)
for u in unknown:
    print(f"  {u}: tested but not in alerts.yml", file=sys.stderr)
if missing or unknown:
    sys.exit(1)
print(f"  {len(alerts)} alerts, each with a firing and a quiet case")
PY

echo "== metric names in rules and dashboard"
python3 check_metric_names.py --root "$root" \
    --exported prometheus/exported-metrics.txt --exported prometheus/event-metrics.txt \
    prometheus/alerts.yml grafana/hsmgate.json || fail "metric names"

echo "== dashboard queries are valid PromQL"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Grafana's variables replaced by values of their kind; each query becomes a recording rule, so
# promtool parses it offline.
python3 - grafana/hsmgate.json > "$tmp/dashboard-rules.yml" <<'PY' || fail "grafana/hsmgate.json: unreadable"
import json, sys
subs = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$gateway_job": "hsmgate-gateway",
        "$ocsp_job": "hsmgate-ocsp", "$presigner_job": "hsmgate-presigner", "$crl_job": "hsmgate-crl",
        "$acme_job": "hsmgate-acme", "$gateway": ".*",
        "$datacenter": ".*", "$responder": ".*"}
exprs = []
def walk(node, title=""):
    if isinstance(node, dict):
        title = node.get("title", title)
        if isinstance(node.get("expr"), str):
            exprs.append((title, node["expr"]))
        for v in node.values():
            walk(v, title)
    elif isinstance(node, list):
        for v in node:
            walk(v, title)
walk(json.load(open(sys.argv[1]))["panels"])
print("groups:\n  - name: dashboard\n    rules:")
for i, (title, e) in enumerate(exprs):
    for k in sorted(subs, key=len, reverse=True):
        e = e.replace(k, subs[k])
    if "$" in e:
        sys.exit(f"panel {title!r}: unknown variable in {e}")
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules "$tmp/dashboard-rules.yml" > "$tmp/promtool.out" 2>&1 ||
    { cat "$tmp/promtool.out" >&2; fail "a dashboard query is not valid PromQL"; }
echo "  $(grep -c 'record:' "$tmp/dashboard-rules.yml") queries parse"

echo "== systemd-analyze verify"
bin_for() { # the built binary for /usr/local/bin/$1, else /bin/true
    for dir in "${CARGO_TARGET_DIR:-$root/target}/debug" "${CARGO_TARGET_DIR:-$root/target}/release"; do
        [ -x "$dir/$1" ] && { echo "$dir/$1"; return; }
    done
    echo "  note: $1 is not built; its units are verified with /bin/true in its place" >&2
    echo /bin/true
}
subst=()
for b in signer hsmgate-ocsp ca-frontend hsm-config; do
    subst+=(-e "s#/usr/local/bin/$b\\b#$(bin_for "$b")#g")
done
for unit in systemd/*.service; do
    sed "${subst[@]}" "$unit" > "$tmp/$(basename "$unit")"
done
grep -q /usr/local/bin "$tmp"/*.service && fail "a unit names a binary check.sh does not know: $(grep -l /usr/local/bin "$tmp"/*.service)"
# systemd-analyze exits 0 on unknown keys and unparsable values: any output is a failure.
out="$(cd "$tmp" && systemd-analyze verify ./*.service 2>&1)" || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify warned: $out"
# The hardening stays: systemd's own exposure score (0 best .. 10 worst; the units score 1.4 with
# systemd 252) must stay at or under 2.0.
for unit in "$tmp"/*.service; do
    systemd-analyze security --offline=yes --threshold=20 "$unit" >/dev/null 2>&1 ||
        fail "$(basename "$unit"): hardening weakened: $(systemd-analyze security --offline=yes "$unit" 2>&1 | tail -1)"
done
echo "  $(ls systemd/*.service | wc -l) units verified, exposure <= 2.0"

if [ "$e2e" = 1 ]; then
    echo "== e2e: Prometheus fires the HSM alerts on a real gateway"
    "$here/e2e-hsm-alert.sh" "${CARGO_TARGET_DIR:-$root/target}/debug" || fail "e2e-hsm-alert.sh"
fi

echo "deploy check: OK"
