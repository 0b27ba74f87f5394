"""What the shipped stack files say, read once for the stack tests: the exporter's metric names,
the rules, the dashboards' queries, and a PromQL metric-name extractor.

No mocks here: the tests that use this run promtool, amtool, Alertmanager and Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "prometheus"
GRAFANA = ROOT / "grafana"
RULES = PROMETHEUS / "virk.rules.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Series Prometheus itself makes: the scrape health and the alert state series.
PROMETHEUS_SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Grafana's global variables, and the values the live test substitutes for them.
GRAFANA_GLOBALS = {"__rate_interval": "30s", "__interval": "15s", "__range": "1h"}


def exporter_metric_names() -> set[str]:
    """Every sample name the exporter can expose, from the families in virk_exporter/telemetry/metrics.py.

    Its families are instantiated on fresh registries (the package imports torch lazily, so this
    stays light); prometheus-client adds `_total` to counters and `_bucket`/`_sum`/`_count` to
    histograms (and `_created` to both).
    """
    from prometheus_client import CollectorRegistry

    from virk_exporter.telemetry import metrics as module

    names: set[str] = set()
    for cls in (module.CallerMetrics, module.WorkerMetrics):
        registry = CollectorRegistry()
        cls(registry)
        for family in registry.collect():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
            elif family.type == "summary":
                names |= {family.name, f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
            else:
                names.add(family.name)
    return names


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def recording_rule_names() -> set[str]:
    return {rule["record"] for group in load_rules()["groups"] for rule in group["rules"] if "record" in rule}


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, PromQL) of every rule, plus the queries inside alert annotation templates."""
    out = []
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append((name, rule["expr"]))
            for key, text in (rule.get("annotations") or {}).items():
                # `printf "virk_drift_p_value{model=%q,...}" ... | query`: the format string is PromQL.
                for fmt in re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"[^|}]*\|\s*query', text):
                    out.append((f"{name} annotation {key}", fmt.replace('\\"', '"').replace("%q", '"x"')))
    return out


# --- PromQL: metric names a query reads --------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "atan2", "inf", "nan", "start", "end",
}
_AGGREGATION_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana's label_values(...) included).

    A small lexer, not a parser: string literals, label matchers `{...}`, ranges `[...]`,
    grouping lists `by (...)` and function names are removed; what is left that looks like an
    identifier is a metric name. Selectors with only `{__name__=...}` are not used in this repo.
    """
    names: set[str] = set()
    text = expr
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.S)
    if label_values:
        text = label_values.group(1)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _AGGREGATION_GROUPING.sub(" ", text)
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


# --- Grafana dashboards --------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def dashboard_queries(dashboard: dict) -> list[dict]:
    """Every PromQL query of a dashboard: {where, expr, instant, repeat}."""
    queries = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                queries.append(
                    {
                        "where": f"panel {panel.get('title')!r} ref {target.get('refId')}",
                        "expr": target["expr"],
                        "instant": bool(target.get("instant")) and not target.get("range"),
                        "repeat": panel.get("repeat"),
                    }
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            queries.append({"where": f"annotation {annotation.get('name')!r}", "expr": annotation["expr"], "instant": False, "repeat": None})
    return queries


def variable_query(variable: dict) -> str | None:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return query


def variables_used(expr: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", expr))


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var / ${var} by the given values (Grafana's global variables included)."""
    merged = {**GRAFANA_GLOBALS, **values}

    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in merged:
            raise KeyError(f"variable ${name} has no value")
        return merged[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)
