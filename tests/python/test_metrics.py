"""`/metrics` covers every part (broker, HTTP authentication and answers, shadows, rules,
plugins, store) with consistent names: `shoal_` + snake case, counters end in `_total`, every
family has HELP and TYPE once, and label names are snake case."""

from __future__ import annotations

import json
import re
import urllib.request

from conftest import Shoal
from mqtt_helpers import metric


def families(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"TYPE {name} twice"
            types[name] = kind
        elif line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"HELP {name} twice"
            helps.add(name)
        elif line and not line.startswith("#"):
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
            assert m, line
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            samples.append((m.group(1), labels))
    assert helps == set(types), set(types) ^ helps
    return types, samples


def test_metric_names_and_labels_are_consistent(shoal: Shoal):
    base = f"http://{shoal.host}:{shoal.http_port}"
    # Some traffic on each part first: a shadow update over HTTP, a management call, a refusal.
    req = urllib.request.Request(f"{base}/things/truck-1/shadow", method="POST",
                                 data=json.dumps({"state": {"reported": {"t": -18}}}).encode())
    urllib.request.urlopen(req, timeout=10).close()
    urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10).close()
    try:
        urllib.request.urlopen(f"{base}/api/v1/things/nobody", timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 404
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    types, samples = families(text)
    for name, kind in types.items():
        assert re.fullmatch(r"shoal_[a-z0-9_]+", name), name
        assert kind in ("counter", "gauge", "histogram"), (name, kind)
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"
    for name, labels in samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} has no TYPE"
        for label in labels:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", label), (name, label)
    # Every part is there.
    for prefix in ["shoal_connections", "shoal_messages_in_total", "shoal_store_up",
                   "shoal_http_auth_total", "shoal_http_requests_total", "shoal_shadow_requests_total",
                   "shoal_rules_matched_total", "shoal_plugin_invocations_total",
                   "shoal_ws_bridged_connections"]:
        assert prefix in types, prefix
    assert metric(shoal, "shoal_shadow_requests_total", 'operation="update",code="200"') == 1
    assert metric(shoal, "shoal_http_requests_total",
                  'method="POST",route="/things/{thing}/shadow",status="200"') == 1
    assert metric(shoal, "shoal_http_requests_total",
                  'method="GET",route="/api/v1/things/{thing}",status="404"') == 1
    assert metric(shoal, "shoal_http_auth_total", 'outcome="ok"') >= 3
