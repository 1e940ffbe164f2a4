#!/usr/bin/env python3
"""Checks that alert rules and dashboards name only metrics hsmgate exports.

Two links, each checked:

1. exported-metrics.txt (a scrape of the running dev stack, made by scrape-metrics.sh) against
   the code: every metric family in it must be registered in a `.register("name", ...)` call of
   the workspace's Rust sources (with the registry prefixes those sources use), so a metric
   renamed or removed in the code fails here until the scrape is refreshed.
2. Every metric name in the alert rules' `expr` and in the dashboards' queries against the
   scrape: each must be a sample name the scrape exported (counters as `_total`, histograms as
   `_bucket`/`_sum`/`_count`), and an `le="..."` matcher on a histogram must be one of its
   bucket bounds as exported (prometheus-client writes `le="3600.0"`, not `le="3600"`).

No network and no running stack: everything comes from files. Exit status 1 with one line per
problem; `--self-test` checks that the checker itself rejects what it must.
"""

import argparse
import json
import os
import re
import sys

try:
    import yaml
except ImportError:  # python3-yaml (hsm-config/dev/setup.sh installs it)
    sys.exit("check_metric_names.py: python3-yaml is required (apt-get install python3-yaml)")

# Names of our metrics start with these; `up` is Prometheus's own per-target series.
OUR_PREFIXES = ("hsmgate_", "ocsp_")
PROMETHEUS_SERIES = {"up"}
METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:$])((?:hsmgate|ocsp)_[A-Za-z0-9_:]*|up)(?![A-Za-z0-9_:(])")
LE_SELECTOR = re.compile(r"((?:hsmgate|ocsp)_[A-Za-z0-9_]*_bucket)\s*\{([^}]*)\}")
LE_MATCHER = re.compile(r'\ble\s*=\s*"([^"]*)"')
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")


def load_exported(path):
    """{family: (type, {le bounds})} from exported-metrics.txt."""
    families = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 3:
                sys.exit(f"{path}:{n}: expected `<job> <family> <type> [le=...]`, got {line!r}")
            _job, family, kind = parts[:3]
            les = set()
            for extra in parts[3:]:
                if extra.startswith("le="):
                    les.update(b for b in extra[3:].split(",") if b)
            families[family] = (kind, les)
    return families


def sample_names(families):
    """Every series name the families put in Prometheus."""
    names = set(PROMETHEUS_SERIES)
    for family, (kind, _) in families.items():
        if kind == "counter":
            names.add(family + "_total")
        elif kind == "histogram":
            names.update(family + s for s in ("_bucket", "_sum", "_count"))
        else:  # gauge, info, unknown
            names.add(family)
    return names


def registered_names(root):
    """Names registered in the Rust sources, with every registry prefix those sources use."""
    literals, prefixes = set(), {""}
    register = re.compile(r'\.register\(\s*"([A-Za-z0-9_]+)"')
    prefix = re.compile(r'with_prefix\(\s*"([A-Za-z0-9_]+)"')
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", "node_modules")]
        for name in files:
            if not name.endswith(".rs"):
                continue
            with open(os.path.join(top, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            literals.update(register.findall(text))
            prefixes.update(prefix.findall(text))
    return {(p + "_" + l if p else l) for p in prefixes for l in literals}


def expressions(path):
    """(where, expression) for every PromQL expression in a rule file or a Grafana dashboard."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
        out = []

        def walk(node, where):
            if isinstance(node, dict):
                title = node.get("title", where)
                for key, value in node.items():
                    if key == "expr" and isinstance(value, str):
                        out.append((f"{path}: panel {title!r}", value))
                    elif key == "query" and isinstance(value, str):
                        out.append((f"{path}: variable {node.get('name', title)!r}", value))
                    elif key == "query" and isinstance(value, dict) and "query" in value:
                        out.append((f"{path}: variable {node.get('name', title)!r}", value["query"]))
                    else:
                        walk(value, title)
            elif isinstance(node, list):
                for item in node:
                    walk(item, where)

        walk(dash, path)
        return out
    with open(path, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    out = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            out.append((f"{path}: {name}", str(rule["expr"])))
    return out


def check_expression(where, expr, names, families):
    problems = []
    bare = QUOTED.sub('""', expr)
    for token in METRIC_TOKEN.findall(bare):
        if token not in names:
            problems.append(f"{where}: `{token}` is not a metric hsmgate exports")
    for metric, matchers in LE_SELECTOR.findall(expr):
        family = metric[: -len("_bucket")]
        bounds = families.get(family, (None, set()))[1]
        for le in LE_MATCHER.findall(matchers):
            if bounds and le not in bounds:
                problems.append(
                    f'{where}: {metric}{{le="{le}"}} is no exported bucket bound '
                    f"(exported: {', '.join(sorted(bounds, key=lambda b: float(b)))})"
                )
    return problems


def run(root, exported_paths, files):
    problems = []
    families = {}
    registered = registered_names(root)
    for exported_path in exported_paths:
        listed = load_exported(exported_path)
        for family in sorted(listed):
            if family not in registered and family not in PROMETHEUS_SERIES:
                problems.append(
                    f"{exported_path}: `{family}` is registered nowhere in the Rust sources: "
                    "renamed or removed? refresh the list with hsm-config/deploy/scrape-metrics.sh"
                )
        families.update(listed)
    names = sample_names(families)
    count = 0
    for path in files:
        for where, expr in expressions(path):
            count += 1
            problems.extend(check_expression(where, expr, names, families))
    return problems, count, len(families)


def self_test():
    families = {
        "hsmgate_hsm_up": ("gauge", set()),
        "hsmgate_rpcs": ("counter", set()),
        "ocsp_x_seconds": ("histogram", {"3600.0", "+Inf"}),
    }
    names = sample_names(families)
    must_pass = [
        'max by (datacenter) (hsmgate_hsm_up{job="hsmgate-gateway"}) == 0',
        'rate(hsmgate_rpcs_total{code=~"hsmgate_nothing"}[5m])',
        'rate(ocsp_x_seconds_bucket{le="3600.0"}[5m]) / rate(ocsp_x_seconds_count[5m])',
        'up{job=~"hsmgate-.*"} == 0',
        "sum(rate(hsmgate_rpcs_total[$__rate_interval]))",
        "label_values(hsmgate_hsm_up, datacenter)",
    ]
    must_fail = [
        "hsmgate_hsm_down == 1",  # no such metric
        "rate(hsmgate_rpcs[5m])",  # a counter without _total
        "hsmgate_hsm_up_total",  # a gauge with _total
        'rate(ocsp_x_seconds_bucket{le="3600"}[5m])',  # bound written differently
        "ocsp_x_seconds",  # a histogram's family name is no series
    ]
    bad = []
    for e in must_pass:
        if check_expression("self-test", e, names, families):
            bad.append(f"self-test: rejected a good expression: {e}")
    for e in must_fail:
        if not check_expression("self-test", e, names, families):
            bad.append(f"self-test: accepted a bad expression: {e}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="workspace root (Rust sources)")
    ap.add_argument(
        "--exported",
        required=True,
        action="append",
        help="exported-metrics.txt (repeatable: event-metrics.txt lists what an idle scrape cannot show)",
    )
    ap.add_argument("files", nargs="+", help="rule files (.yml) and dashboards (.json)")
    args = ap.parse_args()
    problems = self_test()
    found, count, families = run(args.root, args.exported, args.files)
    problems.extend(found)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"metric names: {count} expressions use only the {families} exported families, all registered in the code")


if __name__ == "__main__":
    main()
