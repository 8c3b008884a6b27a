#!/usr/bin/env python3
"""The cold-chain demo at scale (issue #8): `shoal demo` with N trucks (default 1,000), each
reporting every real second over mutual TLS, with every rule and plugin live (the archive of
every reading, the cold-chain-alerts plugin on every reading and on every lifecycle event),
on this machine. Prints and writes (JSON, `--results`):

- telemetry offered by the simulator and delivered by the broker per second, and the share of
  readings the rules archived and the plugin judged (with the rules engine's drops and the
  plugin's failures);
- alert latency, p50/p99/max: from the moment a watcher subscribed on the plain listener
  receives a reading to the moment it receives the alert that reading raised (the alert is
  published by the plugin, a hop through the rules workers, the plugin and the broker);
- CPU (% of one core) and RSS (now and peak) of `shoal serve`, and the simulator's CPU;
- with `--browser` (Playwright + Debian Chromium): the dashboard under that load, the time
  until it is live and shows every truck, and the frames per second it paints.

There is no peer run: Mosquitto has no rules, plugins or shadows to run this workload with.

    python3 tests/bench/coldchain.py --rebuild            # 1,000 trucks, 60 s measured
    python3 tests/bench/coldchain.py --trucks 200 --measure 20 --browser

Release binaries from $CARGO_TARGET_DIR/release (built with --rebuild), the plugin from
plugins/dist (plugins/build.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "shoal-target"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> tuple[int, int]:
    now = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return now, peak


def metrics(http: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def total(m: dict[str, float], prefix: str, must: str = "") -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix) and must in k)


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Watcher:
    """Counts readings and matches each alert to the reading that raised it."""

    def __init__(self, port: int):
        self.lock = threading.Lock()
        self.readings = 0
        self.seen: dict[tuple[str, int], float] = {}
        self.latencies: list[float] = []
        self.alerts = 0
        self.kinds: dict[str, int] = {}
        self.unmatched = 0
        self.measuring = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watcher")
        c.on_message = self.on_message
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port, keepalive=60)
        c.subscribe([("fleet/+/telemetry", 0), ("fleet/+/alerts", 0)])
        c.loop_start()
        self.client = c

    def on_message(self, _c, _u, m):
        now = time.monotonic()
        topic = m.topic
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        truck = topic.split("/")[1]
        with self.lock:
            if topic.endswith("/telemetry"):
                if self.measuring:
                    self.readings += 1
                ts = doc.get("ts")
                if isinstance(ts, int):
                    self.seen[(truck, ts)] = now
                    if len(self.seen) > 400_000:
                        # Keep the newest half.
                        for k in list(self.seen)[:200_000]:
                            del self.seen[k]
                return
            if not self.measuring:
                return
            self.alerts += 1
            self.kinds[doc.get("kind", "?")] = self.kinds.get(doc.get("kind", "?"), 0) + 1
            sent = self.seen.get((truck, doc.get("ts")))
            if sent is None:
                # Lifecycle alerts (connectivity) carry the broker's time, not a reading's.
                self.unmatched += 1
            else:
                self.latencies.append((now - sent) * 1000)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def dashboard(url: str, trucks: int, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1500, "height": 1000})
            t0 = time.monotonic()
            page.goto(url)
            page.wait_for_selector("#status[data-state=live]", timeout=60_000)
            live = time.monotonic() - t0
            page.wait_for_function(
                f"() => document.querySelectorAll('#map circle.truck-dot').length >= {trucks}", timeout=120_000)
            all_trucks = time.monotonic() - t0
            fps = page.evaluate(
                """ms => new Promise(done => { let n = 0; const t0 = performance.now();
                       const tick = () => { n++; if (performance.now() - t0 < ms) requestAnimationFrame(tick);
                                            else done(n * 1000 / (performance.now() - t0)); };
                       requestAnimationFrame(tick); })""", seconds * 1000)
            # How long a click takes to show the truck (the page's answer to a user).
            t1 = time.monotonic()
            page.click('#trucks tr[data-truck="truck-1"]')
            page.wait_for_selector('#detail[data-truck="truck-1"]', timeout=10_000)
            click_ms = (time.monotonic() - t1) * 1000
            rate = page.inner_text("#count-rate")
            ARTIFACT = ROOT / "tests" / "python" / ".artifacts"
            ARTIFACT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACT / f"dashboard-{trucks}-trucks.png"))
            return {"live_s": round(live, 2), "all_trucks_s": round(all_trucks, 2), "fps": round(fps, 1),
                    "select_truck_ms": round(click_ms), "msgs_per_s_shown": rate}
        finally:
            b.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trucks", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=15, help="seconds after every truck connected")
    ap.add_argument("--measure", type=float, default=60, help="measured seconds")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--incident-rate", type=float, default=0.4)
    ap.add_argument("--browser", action="store_true", help="also load the dashboard in Chromium")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()

    if args.rebuild:
        subprocess.run(["cargo", "+1.97.0", "build", "--release", "--locked", "-p", "shoal-server",
                        "-p", "shoal-coldchain"], cwd=ROOT, check=True)
    shoal = TARGET / "release" / "shoal"
    for exe in (shoal, TARGET / "release" / "shoal-coldchain"):
        if not exe.is_file():
            sys.exit(f"{exe} is missing: run with --rebuild")
    if not (ROOT / "plugins" / "dist" / "cold-chain-alerts.wasm").is_file():
        sys.exit("plugins/dist/cold-chain-alerts.wasm is missing: run plugins/build.sh")

    data = Path(tempfile.mkdtemp(prefix="shoal-coldchain-bench-"))
    http_port, mqtts, plain = free_port(), free_port(), free_port()
    http = f"http://127.0.0.1:{http_port}"
    # A reading every simulated minute, 60 simulated seconds per real one: every truck reports
    # every real second, and an hour of driving (with its incidents) passes per real minute.
    cmd = [str(shoal), "demo", "--trucks", str(args.trucks), "--interval", "60", "--time-scale", "60",
           "--seed", str(args.seed), "--incident-rate", str(args.incident_rate), "--data-dir", str(data),
           "--plugins-dir", str(ROOT / "plugins" / "dist"), "--http-listen", f"127.0.0.1:{http_port}",
           "--mqtts-listen", f"127.0.0.1:{mqtts}", "--mqtt-listen", f"127.0.0.1:{plain}"]
    demo = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(demo.stdout), daemon=True).start()
    watcher = None
    try:
        t_start = time.monotonic()
        # Up: provisioned, and 95 % connected (trucks in a scripted connectivity loss are away).
        while not any(int(m[1]) >= 0.95 * args.trucks
                      for m in re.finditer(r"trucks (\d+)/\d+ connected", "".join(out))):
            if demo.poll() is not None or time.monotonic() - t_start > 900:
                sys.exit("the fleet did not come up:\n" + "".join(out)[-4000:])
            time.sleep(0.5)
        ready = time.monotonic() - t_start
        serve_pid = int(subprocess.check_output(["pgrep", "-f", f"serve --store embedded --data-dir {data}"],
                                                text=True).split()[0])
        sim_pid = int(subprocess.check_output(["pgrep", "-f", f"shoal-coldchain.*{data}"], text=True).split()[0])
        url = re.search(r"dashboard\s+(http://\S+)", "".join(out))[1]
        watcher = Watcher(plain)
        print(f"fleet up after {ready:.0f} s (provisioning, and 95 % of {args.trucks} mTLS connections); "
              f"warming up {args.warmup:.0f} s", flush=True)
        time.sleep(args.warmup)

        m0, c0, s0, t0 = metrics(http), cpu_ticks(serve_pid), cpu_ticks(sim_pid), time.monotonic()
        with watcher.lock:
            watcher.measuring = True
        browser = {}
        if args.browser:
            browser = dashboard(url, args.trucks, 5)
        time.sleep(max(0.0, args.measure - (time.monotonic() - t0)))
        with watcher.lock:
            watcher.measuring = False
        m1, c1, s1, t1 = metrics(http), cpu_ticks(serve_pid), cpu_ticks(sim_pid), time.monotonic()
        rss_now, rss_peak = rss_kib(serve_pid)
        secs = t1 - t0

        def rate(prefix: str, must: str = "") -> float:
            return (total(m1, prefix, must) - total(m0, prefix, must)) / secs

        received = rate("shoal_messages_in_total")
        archived = rate("shoal_rules_archive_written_total")
        plugin_calls = rate("shoal_plugin_invocations_total")
        lat = watcher.latencies
        result = {
            "trucks": args.trucks,
            "seconds": round(secs, 1),
            "fleet_up_s": round(ready, 1),
            "publishes_in_per_s": round(received),
            "telemetry_delivered_to_watcher_per_s": round(watcher.readings / secs),
            "archived_per_s": round(archived),
            "plugin_calls_per_s": round(plugin_calls),
            "rules_dropped": total(m1, "shoal_rules_dropped_total") - total(m0, "shoal_rules_dropped_total"),
            "archive_dropped": total(m1, "shoal_rules_archive_dropped_total")
            - total(m0, "shoal_rules_archive_dropped_total"),
            "plugin_failures": total(m1, "shoal_plugin_failures_total") - total(m0, "shoal_plugin_failures_total"),
            "plugin_failures_by_kind": {
                k: n for k in ("trap", "timeout", "memory_limit", "output_limit", "fuel_exhausted", "error", "init",
                          "suspended", "unavailable")
                if (n := total(m1, "shoal_plugin_failures_total", f'kind="{k}"')
                    - total(m0, "shoal_plugin_failures_total", f'kind="{k}"'))
            },
            "plugin_rejected": total(m1, "shoal_plugin_rejected_total") - total(m0, "shoal_plugin_rejected_total"),
            "alerts": watcher.alerts,
            "alert_kinds": watcher.kinds,
            "alert_latency_ms": {"n": len(lat), "p50": round(percentile(lat, 50), 1),
                                 "p99": round(percentile(lat, 99), 1), "max": round(max(lat, default=float("nan")), 1)},
            "shoal_cpu_pct": round((c1 - c0) / CLK_TCK / secs * 100),
            "simulator_cpu_pct": round((s1 - s0) / CLK_TCK / secs * 100),
            "shoal_rss_mib": round(rss_now / 1024),
            "shoal_rss_peak_mib": round(rss_peak / 1024),
            "dashboard": browser,
        }
        print(json.dumps(result, indent=2))
        if args.results:
            args.results.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        if watcher:
            watcher.close()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
