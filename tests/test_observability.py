"""deploy/grafana/meetbot.json and deploy/prometheus/alerts.yml query only real metrics.

Every PromQL expression in both files is parsed with a real PromQL parser
(promql-parser, the Rust parser Prometheus-compatible databases use), the
metric names are taken from its syntax tree, and each must be exposed by a
real `meetbot serve`'s /metrics, started against the doubles like the other
scenario tests. A histogram's ``_bucket``/``_sum``/``_count`` and a counter's
``_total`` count as its family. Label names in matchers must be ones the bot
puts on that metric, and a value matched exactly must be one the bot uses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser
import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ALICE, BOB, sender_for, wait_for
from tests.helpers import dm_links

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "meetbot.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
HOOK_SECRET = "hook-secret-0123456789abcdef"
#: Made by Prometheus for every scrape target, not by the bot.
PROMETHEUS_OWN = {"up"}
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


# -- reading the files ----------------------------------------------------------------


def grafana_exprs() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target, with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r}", grafana_to_promql(t["expr"])))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m, f"template variable {var['name']}: not label_values(...): {query}"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def grafana_to_promql(expr: str) -> str:
    """Grafana's ``$__rate_interval`` and ``$var`` as Prometheus would get them."""
    expr = re.sub(r"\$__(rate_)?interval\b", "5m", expr)
    expr = re.sub(r"\$\{?[A-Za-z_]\w*\}?", "meetbot", expr)
    assert "$" not in expr, expr
    return expr


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


@dataclass
class Selector:
    metric: str
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (op, value)


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr``, by walking the parser's syntax tree."""
    found: list[Selector] = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {}
            name = node.name
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    name = name or m.value
                else:
                    labels[m.name] = (str(m.op).rsplit(".", 1)[-1], m.value)
            assert not node.matchers.or_matchers, f"`or` matchers are not checked: {expr}"
            assert name, f"a selector without a metric name: {expr}"
            found.append(Selector(name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


# -- what a real bot exposes ------------------------------------------------------------


@dataclass
class Exposed:
    """Sample names a scrape can return, with the labels and values seen on each."""

    names: dict[str, str] = field(default_factory=dict)  # sample name -> family
    labels: dict[str, set[str]] = field(default_factory=dict)  # family -> label names
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)


def exposed_from(text: str) -> Exposed:
    out = Exposed()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("meetbot_"):
            continue
        out.help[family.name] = family.documentation
        out.labels.setdefault(family.name, set())
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.names[family.name + suffix] = family.name
        for s in family.samples:
            out.names[s.name] = family.name
            for k, v in s.labels.items():
                out.labels[family.name].add(k)
                out.values.setdefault((family.name, k), set()).add(v)
    return out


def problems(where: str, expr: str, exposed: Exposed) -> list[str]:
    found = []
    for sel in selectors(expr):
        if sel.metric in PROMETHEUS_OWN:
            continue
        family = exposed.names.get(sel.metric)
        if family is None:
            found.append(f"{where}: {sel.metric} is not exposed by /metrics")
            continue
        known = exposed.labels[family] | TARGET_LABELS
        if sel.metric.endswith("_bucket"):
            known |= {"le"}
        for label, (op, value) in sel.labels.items():
            if label not in known:
                found.append(f"{where}: {sel.metric} has no label {label!r}")
            elif op == "Equal" and label not in TARGET_LABELS:
                seen = exposed.values.get((family, label), set())
                if value not in seen and f'"{value}"' not in exposed.help[family]:
                    found.append(f"{where}: {sel.metric}{{{label}={value!r}}} never happens")
    return found


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """/metrics of a bot that has opened a room and answered AMS's webhook."""
    from bot.sim.ams import AmsDouble
    from bot.sim.slack import SlackDouble
    from tests.conftest import (
        BOT_TOKEN,
        STREAM_SECRET,
        TEAM,
        BotProcess,
        bot_env,
    )

    tmp = tmp_path_factory.mktemp("observability")
    with (
        AmsDouble(stream_secret=STREAM_SECRET) as ams,
        SlackDouble(bot_token=BOT_TOKEN, team_id=TEAM) as slack,
    ):
        for uid, name in [(ALICE, "alice"), (BOB, "bob")]:
            slack.add_user(uid, name)
        slack.add_channel("C1", "general")
        env = bot_env(
            ams,
            slack,
            f"sqlite:///{tmp / 'meetbot.db'}",
            # With a key the stream secret is stored, so its rotation time is a metric.
            MEETBOT_SECRET_KEY=Fernet.generate_key().decode(),
            MEETBOT_WEBHOOK_SECRET=HOOK_SECRET,
        )
        bot = BotProcess(env, tmp / "bot.log").start()
        try:
            r = sender_for(bot, slack).command(f"standup <@{BOB}|bob>", user_id=ALICE)
            assert r.status_code == 200
            wait_for(lambda: dm_links(slack, BOB))
            hook = f"{bot.url}/ams/auth/{HOOK_SECRET}"
            assert requests.post(hook, data=b"{", timeout=5).status_code == 400
            refused = {"streamId": "nope", "token": "not-a-jwt"}
            assert requests.post(hook, json=refused, timeout=5).status_code == 403
            text = requests.get(bot.url + "/metrics", timeout=5).text
        finally:
            bot.terminate()
    return exposed_from(text)


# -- the checks ----------------------------------------------------------------------


def test_the_files_hold_queries():
    assert len(grafana_exprs()) >= 10
    assert len(alert_exprs()) >= 10


@pytest.mark.parametrize(
    ("where", "expr"), grafana_exprs() + alert_exprs(), ids=lambda x: str(x)[:60]
)
def test_every_query_parses_and_uses_real_metrics(scraped, where, expr):
    assert problems(where, expr, scraped) == []


def test_what_an_operator_must_watch_is_covered():
    """AMS errors and latency, the auth webhook's latency, outbox backlog and age, Slack
    429s, failed rooms, rotation age: each in the dashboard and in an alert."""
    needed = {
        "AMS errors": r"meetbot_ams_calls_total\{[^}]*outcome!~",
        "AMS latency": r"meetbot_ams_call_seconds_bucket",
        "webhook latency": r"meetbot_auth_webhook_seconds_bucket",
        "outbox backlog": r"meetbot_outbox_pending",
        "outbox age": r"meetbot_outbox_oldest_age_seconds",
        "Slack 429s": r'meetbot_slack_sends_total\{[^}]*outcome="ratelimited"',
        "failed rooms": r"meetbot_room_events_total",
        "rotation age": r"time\(\) - max.*meetbot_stream_secret_last_rotation_timestamp_seconds",
    }
    for source, exprs in (("dashboard", grafana_exprs()), ("alerts", alert_exprs())):
        text = "\n".join(e for _, e in exprs)
        for what, pattern in needed.items():
            assert re.search(pattern, text), f"{source} does not watch {what}"
    assert not re.search(r"meetbot_worker_", DASHBOARD.read_text() + ALERTS.read_text())


def test_alert_rules_are_complete():
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]


def test_dashboard_panels_are_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and "datasource" in names
        assert p["targets"] and p.get("description"), p["title"]


# -- the checker itself ---------------------------------------------------------------


EXPOSED = exposed_from(
    "# HELP meetbot_x_seconds Time.\n# TYPE meetbot_x_seconds histogram\n"
    '# HELP meetbot_sends_total Sends by outcome ("sent", "failed").\n'
    "# TYPE meetbot_sends_total counter\n"
    'meetbot_sends_total{outcome="sent"} 1.0\n'
    "# HELP meetbot_level A gauge.\n# TYPE meetbot_level gauge\nmeetbot_level 3.0\n"
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("histogram_quantile(0.9, sum by (le) (rate(meetbot_x_seconds_bucket[5m])))", []),
        ('sum(rate(meetbot_sends_total{outcome="failed",job="a"}[5m]))', []),
        ('{__name__="meetbot_level"} > 1 and on() up == 1', []),
        ("max_over_time(meetbot_level[1h:5m])", []),
        ("rate(meetbot_x_seconds[5m])", ["meetbot_x_seconds is not exposed"]),
        ("meetbot_sends", ["meetbot_sends is not exposed"]),
        ("sum(meetbot_levle)", ["meetbot_levle is not exposed"]),
        ('meetbot_sends_total{outcom="sent"}', ["has no label 'outcom'"]),
        ('meetbot_sends_total{outcome="sant"}', ["{outcome='sant'} never happens"]),
        ('meetbot_level{le="1"}', ["has no label 'le'"]),
        ("time() - meetbot_gone_seconds", ["meetbot_gone_seconds is not exposed"]),
    ],
)
def test_the_checker_finds_unreal_metrics(expr, expected):
    found = problems("t", expr, EXPOSED)
    assert len(found) == len(expected), found
    for message, part in zip(found, expected, strict=True):
        assert part in message


def test_grafana_variables_become_promql():
    expr = 'sum(rate(meetbot_x_seconds_count{job=~"$job"}[$__rate_interval])) / ${x}'
    assert grafana_to_promql(expr) == (
        'sum(rate(meetbot_x_seconds_count{job=~"meetbot"}[5m])) / meetbot'
    )


def test_a_syntax_error_fails():
    with pytest.raises(ValueError):
        selectors("sum(rate(meetbot_level[5m])")
