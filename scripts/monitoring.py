#!/usr/bin/env python3
"""Builds Stoa's SRE assets and their plain copies.

Sources:
  - the dashboard: the panel list below (every query is tested against a real Prometheus
    scraping real stoa-api pods and the operator: tests/tests/monitoring.rs);
  - the rules: helm/stoa-operator/files/rules.yaml (placeholders filled by the chart).
Outputs:
  - helm/stoa-operator/files/dashboard.json      (shipped by the chart as a ConfigMap)
  - manifests/monitoring/stoa-dashboard.json     (to import into Grafana by hand)
  - manifests/monitoring/stoa-rules.yaml         (a Prometheus rule file, default SLOs)
  - manifests/monitoring/prometheusrule.yaml     (the same rules as a PrometheusRule)
  - manifests/monitoring/dashboard-configmap.yaml

Usage: scripts/monitoring.py [--check]   (`make monitoring`; `make validate` runs --check)
Needs: pip install helm-python-sdk pyyaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from helm_python import chart as helm_chart

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "stoa-operator"
PLAIN = ROOT / "manifests" / "monitoring"

API = 'namespace="$namespace",job="$job"'
NOT_PROBES = 'route!~"/healthz|/readyz"'
OPERATOR = 'namespace="$namespace",stoa="$job"'
SERVER_ERRORS = API + ',status=~"5.."'
CACHE_HITS = API + ',outcome="hit"'
# The workers, scraped through their own Service `<stoa>-worker`. Every worker reads the
# whole queue, so queue gauges are combined with max, never sum.
WORKERS = 'namespace="$namespace",job="$job-worker"'


def rate(metric: str, selector: str = API, by: str = "", window: str = "$__rate_interval") -> str:
    grouping = f"sum by ({by}) " if by else "sum "
    return f"{grouping}(rate({metric}{{{selector}}}[{window}]))"


def quantile(q: float, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, {by}) "
        f"(rate(stoa_http_request_duration_seconds_bucket{{{API},{NOT_PROBES}}}[$__rate_interval])))"
    )


# (row, [(title, unit, description, [(legend, expr), ...]), ...])
ROWS = [
    ("Traffic", [
        ("Requests by route", "reqps", "Requests per second by route template (health probes included).",
         [("{{route}}", rate("stoa_http_requests_total", by="route"))]),
        ("Responses by status", "reqps", "Requests per second by HTTP status.",
         [("{{status}}", rate("stoa_http_requests_total", by="status"))]),
        ("Error ratio (5xx) by route", "percentunit",
         "Share of each route's requests answered 5xx: what the availability SLO counts.",
         [("{{route}}",
           f'({rate("stoa_http_requests_total", SERVER_ERRORS, "route")} '
           f'or {rate("stoa_http_requests_total", by="route")} * 0) '
           f'/ {rate("stoa_http_requests_total", by="route")}')]),
        ("Latency p50 / p90 / p99", "s", "Latency percentiles over every route but the probes.",
         [("p50", quantile(0.5, "job")), ("p90", quantile(0.9, "job")), ("p99", quantile(0.99, "job"))]),
        ("Latency p99 by route", "s", "The slowest routes.",
         [("{{route}}", quantile(0.99, "route"))]),
        ("Requests in flight", "short", "Requests being served now, per pod (what the Concurrency autoscaler targets).",
         [("{{instance}}", f"sum by (instance) (stoa_http_requests_in_flight{{{API}}})"),
          ("average concurrency {{instance}}", f"sum by (instance) (rate(stoa_http_busy_seconds_total{{{API}}}[$__rate_interval]))")]),
        ("Refused (503) by reason", "reqps",
         "overloaded: shed at the concurrency limit; timeout: past the request timeout; database_busy: no pool connection within the acquire timeout.",
         [("{{reason}}", rate("stoa_refused_requests_total", by="reason"))]),
        ("Rate-limit rejections by bucket", "reqps", "429s per bucket (ip, user, auth, login).",
         [("{{bucket}}", rate("stoa_rate_limited_requests_total", by="bucket"))]),
    ]),
    ("Dependencies", [
        ("Database pool use", "short", "Connections in use and the pool's maximum, per pod.",
         [("in use {{instance}}",
           f"sum by (instance) (stoa_db_pool_connections{{{API}}} - stoa_db_pool_idle_connections{{{API}}})"),
          ("max {{instance}}", f"sum by (instance) (stoa_db_pool_max_connections{{{API}}})")]),
        ("Pool waits that timed out", "reqps", "Requests that waited STOA_DB_ACQUIRE_TIMEOUT for a connection and were refused.",
         [("database_busy", rate("stoa_refused_requests_total", API + ',reason="database_busy"'))]),
        ("Cache hit ratio by kind", "percentunit", "Redis response cache: hits over lookups (article, list, tags).",
         [("{{kind}}",
           f'{rate("stoa_cache_requests_total", CACHE_HITS, "kind")} '
           f'/ {rate("stoa_cache_requests_total", by="kind")}')]),
        ("Dependencies up", "short", "1 when the last check reached PostgreSQL / Redis; Redis 0 = degraded mode.",
         [("{{dependency}} {{instance}}", f"min by (dependency, instance) (stoa_dependency_up{{{API}}})")]),
    ]),
    ("Keys, credentials, schema", [
        ("Signing keys loaded", "short", "Pods that have loaded each key, by state (next, active, retiring).",
         [("{{kid}} {{state}}", f"sum by (kid, state) (stoa_signing_keys_loaded{{{API}}})")]),
        ("Active key age", "s", "Time since the active signing key was created (from the operator).",
         [("{{kid}}", f'time() - max by (kid) (stoa_operator_signing_key_created_timestamp_seconds{{{OPERATOR},state="active"}})')]),
        ("Key set reloads and rejected updates", "short", "Key sets loaded per pod since start, and updates rejected.",
         [("loaded {{instance}}", f"max by (instance) (stoa_keyset_generation{{{API}}})"),
          ("rejected", f"sum (increase(stoa_keyset_reload_errors_total{{{API}}}[$__rate_interval]))")]),
        ("Database role in use", "short", "Pods per database login role (two during a credential rotation).",
         [("{{user}}", f"count by (user) (stoa_db_credentials_info{{{API}}})"),
          ("{{outcome}}", f"sum by (outcome) (increase(stoa_db_credential_reloads_total{{{API}}}[$__rate_interval]))")]),
        ("Schema version", "none", "Newest migration in the database vs the newest expand step the pods need.",
         [("applied", f"max (stoa_schema_version{{{API}}})"),
          ("required", f"max (stoa_schema_required_version{{{API}}})")]),
        ("Security events", "reqps", "Failed logins, rejected current passwords, invalid and reused refresh tokens.",
         [("{{event}}", rate("stoa_security_events_total", by="event"))]),
        ("Sign-in with identity providers", "reqps",
         "Flows back from each provider by outcome: signed_in, link_pending, or the error the browser returned with (see StoaProviderSignInFailing).",
         [("{{provider}} {{outcome}}", rate("stoa_provider_sign_ins_total", by="provider, outcome"))]),
    ]),
    ("Jobs", [
        ("Jobs by state", "short",
         "The queue by kind: queued (due, waiting for a worker), delayed (waiting for a retry), running, dead (failed on every attempt; see StoaJobsDead).",
         [("{{kind}} {{state}}", f"max by (kind, state) (stoa_jobs{{{WORKERS}}})")]),
        ("Oldest due job", "s", "How long the oldest due job has waited for a worker, by kind (see StoaJobBacklog).",
         [("{{kind}}", f"max by (kind) (stoa_jobs_oldest_due_age_seconds{{{WORKERS}}})")]),
        ("Job attempts by outcome", "ops", "Attempts finished per second: done, retried, dead, lost (lease ran out).",
         [("{{kind}} {{outcome}}", rate("stoa_job_attempts_total", WORKERS, "kind, outcome"))]),
        ("Job duration p90", "s", "90th percentile of one attempt's time, by kind.",
         [("{{kind}}",
           f"histogram_quantile(0.9, sum by (le, kind) (rate(stoa_job_duration_seconds_bucket{{{WORKERS}}}[$__rate_interval])))")]),
        ("Workers and jobs running", "short", "Worker pods reporting, and the jobs they run now.",
         [("workers", f"count (stoa_jobs_running_here{{{WORKERS}}})"),
          ("running", f"sum (stoa_jobs_running_here{{{WORKERS}}})")]),
    ]),
    ("Replicas and operator", [
        ("Replicas and autoscaler", "short",
         "Ready pods; what the load asks for (wanted); what the autoscaler set (desired); the effective maximum and what sets it.",
         [("ready", f"max (stoa_operator_ready_replicas{{{OPERATOR}}})"),
          ("wanted", f"max (stoa_operator_autoscaler_wanted_replicas{{{OPERATOR}}})"),
          ("desired", f"max (stoa_operator_autoscaler_desired_replicas{{{OPERATOR}}})"),
          ("max ({{limited_by}})", f"max by (limited_by) (stoa_operator_autoscaler_max_replicas{{{OPERATOR}}})")]),
        ("Conditions", "short", "The Stoa's conditions: 1 = True, with the reason.",
         [("{{condition}} {{reason}}", f"max by (condition, reason) (stoa_operator_stoa_condition{{{OPERATOR}}})")]),
        ("Operator reconciles", "ops", "Reconciles per second by outcome (all Stoas).",
         [("{{outcome}}", "sum by (outcome) (rate(stoa_operator_reconciles_total[$__rate_interval]))"),
          ("p99 duration (s)",
           "histogram_quantile(0.99, sum by (le) (rate(stoa_operator_reconcile_duration_seconds_bucket[$__rate_interval])))")]),
        ("Operator errors by kind", "ops", "Failed reconciles by kind of error (all Stoas).",
         [("{{error}}", "sum by (error) (rate(stoa_operator_reconcile_errors_total[$__rate_interval]))")]),
        ("Rotation protocol steps", "short", "Key and credential rotation steps in the last hour (all Stoas).",
         [("{{protocol}} {{step}}", "sum by (protocol, step) (increase(stoa_operator_rotation_steps_total[1h]))"),
          ("{{protocol}} p90 confirmation (s)",
           "histogram_quantile(0.9, sum by (le, protocol) (rate(stoa_operator_rotation_confirmation_seconds_bucket[1h])))")]),
        ("Operator leader", "short", "Replicas holding the leader lease: 1 is healthy, 0 means nothing reconciles.",
         [("leaders", "sum (stoa_operator_leader)")]),
    ]),
]


def dashboard() -> dict:
    panels: list[dict] = []
    y = 0
    panel_id = 1
    for row, items in ROWS:
        panels.append({"type": "row", "title": row, "id": panel_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id += 1
        y += 1
        for i, (title, unit, description, targets) in enumerate(items):
            panels.append({
                "type": "timeseries",
                "title": title,
                "description": description,
                "id": panel_id,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                            "tooltip": {"mode": "multi", "sort": "desc"}},
                "targets": [
                    {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (legend, expr) in enumerate(targets)
                ],
            })
            panel_id += 1
        y += ((len(items) + 2) // 3) * 8
    variable = lambda name, label, query: {  # noqa: E731 - a table of three
        "name": name, "label": label, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name}, "definition": query,
        "refresh": 2, "sort": 1, "includeAll": False, "multi": False,
    }
    return {
        "uid": "stoa-overview",
        "title": "Stoa",
        "description": "stoa-api and stoa-operator: traffic, errors, latency, saturation, keys, credentials, schema, replicas, operator.",
        "tags": ["stoa"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "refresh": 1, "includeAll": False, "multi": False},
            variable("namespace", "Namespace", "label_values(stoa_build_info, namespace)"),
            variable("job", "Stoa", 'label_values(stoa_build_info{namespace="$namespace"}, job)'),
        ]},
        "panels": panels,
    }


def _block_strings(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    """Multi-line strings (PromQL, the dashboard JSON) as readable `|` blocks."""
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


yaml.add_representer(str, _block_strings, Dumper=yaml.SafeDumper)


def plain_object(obj: dict) -> dict:
    """A chart-rendered object without Helm's bookkeeping labels."""
    labels = obj["metadata"].get("labels", {})
    for helm_label in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        labels.pop(helm_label, None)
    return obj


def outputs(dashboard_json: str) -> dict[Path, str]:
    if not CHECK:
        # The chart embeds files/dashboard.json: render it with the one being built.
        (CHART / "files" / "dashboard.json").write_text(dashboard_json)
    loaded = helm_chart.Chart.load(str(CHART))
    rendered = loaded.render({"metrics": {"prometheusRule": {"create": "always"}}},
                             name="stoa-operator", namespace="stoa-system", is_install=True)
    rule = yaml.safe_load(rendered["stoa-operator/templates/prometheusrule.yaml"])
    config_map = yaml.safe_load(rendered["stoa-operator/templates/dashboard.yaml"])
    header = "# Generated by `make monitoring` from helm/stoa-operator (default values). Do not edit.\n"
    return {
        CHART / "files" / "dashboard.json": dashboard_json,
        PLAIN / "stoa-dashboard.json": dashboard_json,
        PLAIN / "stoa-rules.yaml": header + yaml.safe_dump(rule["spec"], sort_keys=False, width=120),
        PLAIN / "prometheusrule.yaml": header + yaml.safe_dump(plain_object(rule), sort_keys=False, width=120),
        PLAIN / "dashboard-configmap.yaml": header + yaml.safe_dump(plain_object(config_map), sort_keys=False, width=120),
    }


CHECK = "--check" in sys.argv


def main() -> int:
    dashboard_json = json.dumps(dashboard(), indent=2) + "\n"
    stale = []
    for path, text in outputs(dashboard_json).items():
        if CHECK:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run `make monitoring`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
