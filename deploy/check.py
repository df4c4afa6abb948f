#!/usr/bin/env python3
"""Checks deploy/grafana/ringcache.json and deploy/prometheus/alerts.yml.

Without promtool at hand this is the next best thing: the dashboard is JSON
with unique panel ids and a query in every panel; the rules file is YAML in
Prometheus' rule-file shape (groups of records or alerts, each with an
expression, alerts with a severity and a summary); brackets balance in every
expression. With --metrics FILE (a scrape of ringcache's /metrics, e.g.
`curl -s 127.0.0.1:9180/metrics > m.txt`) it also lists every ringcache_*
name the two files use that the scrape does not have.

Usage: deploy/check.py [--metrics FILE]      exit 1 on a problem
Needs python3 with PyYAML (Debian: python3-yaml).
"""
import argparse
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "grafana", "ringcache.json")
RULES = os.path.join(HERE, "prometheus", "alerts.yml")
SEVERITIES = ("critical", "warning", "info")
NAME = re.compile(r"\bringcache_[a-z0-9_]+")
# Recording-rule names (level:metric:operation) are not scraped metrics.
RECORDED = re.compile(r"\b[a-z_]+:ringcache_[a-z0-9_]+:[a-z0-9_]+")


def balanced(expr):
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    in_str = False
    for ch in expr:
        if ch == '"':
            in_str = not in_str
        if in_str:
            continue
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_str


def names_in(expr):
    return set(NAME.findall(RECORDED.sub("", expr)))


def check_dashboard(problems):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    ids = set()
    used = set()
    for panel in dash.get("panels", []):
        pid = panel.get("id")
        if pid in ids:
            problems.append("dashboard: panel id %s appears twice" % pid)
        ids.add(pid)
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append("dashboard: panel %r has no query" % panel.get("title"))
        for t in targets:
            expr = t.get("expr", "")
            if not balanced(expr):
                problems.append("dashboard: unbalanced brackets in %r" % expr)
            used |= names_in(expr)
    return used


def check_rules(problems):
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    used = set()
    recorded = set()
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not groups:
        problems.append("rules: no groups")
        return used
    for g in groups:
        for r in g.get("rules", []):
            what = r.get("alert") or r.get("record")
            if ("alert" in r) == ("record" in r):
                problems.append("rules: %r must have exactly one of alert, record" % what)
            expr = str(r.get("expr", ""))
            if not expr.strip():
                problems.append("rules: %r has no expr" % what)
            if not balanced(expr):
                problems.append("rules: unbalanced brackets in %r" % what)
            if "record" in r:
                recorded.add(r["record"])
            else:
                if r.get("labels", {}).get("severity") not in SEVERITIES:
                    problems.append("rules: %r has no severity in %s" % (what, SEVERITIES))
                if "summary" not in r.get("annotations", {}):
                    problems.append("rules: %r has no summary" % what)
            for rec in RECORDED.findall(expr):
                if rec not in recorded:
                    problems.append("rules: %r uses %s before it is recorded" % (what, rec))
            used |= names_in(expr)
    return used


def exported(path):
    have = set()
    with open(path) as f:
        for line in f:
            m = re.match(r"(ringcache_[a-z0-9_]+)", line)
            if m:
                have.add(m.group(1))
    return have


def main():
    p = argparse.ArgumentParser(description="check the dashboard and the alert rules")
    p.add_argument("--metrics", help="a scrape of ringcache's /metrics")
    a = p.parse_args()
    problems = []
    used = check_dashboard(problems) | check_rules(problems)
    if a.metrics:
        have = exported(a.metrics)
        for name in sorted(used):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in have and base + "_bucket" not in have and base not in have:
                problems.append("metrics: %s is not in %s" % (name, a.metrics))
    for line in problems:
        print(line)
    print("%d ringcache metric names used; %d problem(s)" % (len(used), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
