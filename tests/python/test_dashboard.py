"""The fleet dashboard in a real browser: `shoal demo` serves `/dashboard/` (embedded in the
binary), a headless Debian Chromium driven by Playwright loads it with the demo's credentials in
the URL fragment, and the test watches the trucks move on the map, an alert arrive in the feed,
a truck's live shadow and charts, and a claim verified from the archive (the report framed
through a presigned URL). Screenshots go to `$SHOAL_ARTIFACTS` (default
`tests/python/.artifacts`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import find_binary

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "dist" / "cold-chain-alerts.wasm"
ARTIFACTS = Path(os.environ.get("SHOAL_ARTIFACTS", REPO / "tests" / "python" / ".artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium: apt-get install chromium (tests/run-all.sh installs it)")


def unsigned(url: str) -> tuple[int, object, bytes]:
    req = urllib.request.Request(url, headers={"X-Test-Unsigned": "1"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def demo(tmp_path):
    """A running `shoal demo` (6 trucks, every incident kind possible); yields (base URL,
    dashboard URL with credentials, output lines)."""
    shoal = find_binary()
    assert PLUGIN.is_file(), "build the plugins first: plugins/build.sh"
    http, mqtts, plain = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [shoal, "demo", "--trucks", "6", "--duration", "170", "--incident-rate", "1", "--time-scale", "60",
         "--seed", "7", "--data-dir", str(tmp_path / "demo"), "--plugins-dir", str(PLUGIN.parent),
         "--http-listen", f"127.0.0.1:{http}", "--mqtts-listen", f"127.0.0.1:{mqtts}",
         "--mqtt-listen", f"127.0.0.1:{plain}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.time() + 60
        url = None
        while url is None:
            m = re.search(r"dashboard\s+(http://\S+)", "".join(out))
            if m:
                url = m[1]
                break
            assert proc.poll() is None, "".join(out)
            assert time.time() < deadline, "no dashboard URL printed:\n" + "".join(out)
            time.sleep(0.2)
        yield f"http://127.0.0.1:{http}", url, out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_dashboard_files_are_served_open_with_a_strict_policy(demo):
    base, url, _ = demo
    # The credentials travel in the fragment only (never sent to a server).
    assert "#key=" in url and "&secret=" in url and url.startswith(f"{base}/dashboard/#")
    code, headers, body = unsigned(f"{base}/dashboard/")
    assert code == 200 and headers["Content-Type"].startswith("text/html"), (code, body[:200])
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b'src="app.js"' in body
    for name, ctype in [("app.js", "text/javascript"), ("sigv4.js", "text/javascript"),
                        ("mqtt.js", "text/javascript"), ("style.css", "text/css")]:
        code, headers, body = unsigned(f"{base}/dashboard/{name}")
        assert code == 200 and headers["Content-Type"].startswith(ctype) and len(body) > 1000, name
    assert unsigned(f"{base}/dashboard/secrets.txt")[0] == 404
    assert unsigned(f"{base}/dashboard/../api/v1/things")[0] in (400, 404)
    # The data behind it is not open.
    assert unsigned(f"{base}/api/v1/things")[0] == 403


@pytest.mark.timeout(240)
def test_dashboard_shows_the_fleet_live_in_chromium(demo):
    from playwright.sync_api import sync_playwright

    base, url, out = demo
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
            page.goto(url)
            page.wait_for_selector("#status[data-state=live]", timeout=30_000)
            assert page.inner_text("#status").strip() == "live"
            # The secret left the address bar.
            assert "secret" not in page.url

            # Every truck on the map and in the table, with its planned route.
            page.wait_for_function(
                "() => document.querySelectorAll('#map circle.truck-dot[data-truck]').length === 6", timeout=30_000)
            page.wait_for_function(
                "() => document.querySelectorAll('#trucks tr[data-truck]').length === 6", timeout=10_000)
            page.wait_for_function(
                "() => document.querySelectorAll('#map polyline.route').length >= 1", timeout=20_000)
            positions = page.eval_on_selector_all(
                "#map circle.truck-dot", "els => els.map(e => [e.dataset.truck, e.getAttribute('cx'), e.getAttribute('cy')])")
            page.screenshot(path=str(ARTIFACTS / "dashboard-1-fleet.png"))

            # Trucks move.
            page.wait_for_function(
                """before => [...document.querySelectorAll('#map circle.truck-dot')].some(e => {
                       const b = before.find(x => x[0] === e.dataset.truck);
                       return b && (b[1] !== e.getAttribute('cx') || b[2] !== e.getAttribute('cy'));
                   })""", arg=positions, timeout=30_000)
            # Every truck's temperature shows once its first reading arrived (a truck whose
            # telemetry stalls or whose connection is lost at the start shows "—" until then).
            try:
                page.wait_for_function(
                    r"""() => [...document.querySelectorAll('#trucks tr[data-truck] td.temp')]
                           .every(e => /^-?\d+(\.\d+)?$/.test(e.textContent.trim()))""", timeout=30_000)
            except Exception:
                temps = page.eval_on_selector_all("#trucks tr[data-truck] td.temp", "els => els.map(e => e.textContent)")
                raise AssertionError(f"temperatures never all shown: {temps}") from None

            # An alert arrives in the feed (the plugin's, over MQTT-over-WebSocket).
            page.wait_for_selector("#alerts li[data-kind][data-truck][data-state]", timeout=120_000)
            first = page.eval_on_selector("#alerts li[data-kind]", "e => ({...e.dataset, text: e.textContent})")
            assert first["truck"].startswith("truck-") and first["state"] in ("raised", "recovered"), first
            page.screenshot(path=str(ARTIFACTS / "dashboard-2-alert.png"))

            # A truck's live shadow and charts.
            page.click('#trucks tr[data-truck="truck-1"]')
            page.wait_for_selector('#detail[data-truck="truck-1"]', timeout=5_000)
            page.wait_for_function(
                "() => document.querySelector('#shadow-reported').textContent.includes('setpoint')", timeout=20_000)
            drawn = page.eval_on_selector(
                "#chart-temp",
                """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                          let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
            assert drawn > 500, f"the temperature chart is blank ({drawn} pixels drawn)"

            # A claim, verified from the archive; the report is framed through a presigned URL.
            page.select_option("#claim-truck", "truck-1")
            page.click("#claim-submit")
            page.wait_for_function(
                "() => ['held', 'broken', 'inconclusive'].includes(document.querySelector('#claim-verdict').dataset.verdict)",
                timeout=30_000)
            verdict = page.inner_text("#claim-verdict")
            assert re.search(r"\b(held|broken|inconclusive)\b", verdict), verdict
            report = page.frame_locator("#claim-report")
            report.locator("h1").wait_for(timeout=15_000)
            assert "Cold-chain claim report: truck-1" in report.locator("h1").inner_text()
            page.locator("#claim").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "dashboard-3-claim.png"), full_page=True)

            # Without credentials: the login form; a wrong secret is refused, the right one works.
            key = re.search(r"#key=([^&]+)", url)[1]
            secret = urllib.request.unquote(re.search(r"&secret=([^&\s]+)", url)[1])
            fresh = browser.new_page()
            fresh.goto(f"{base}/dashboard/")
            fresh.wait_for_selector("#login-form", state="visible", timeout=10_000)
            fresh.fill("#login-key", key)
            fresh.fill("#login-secret", "wrong" + secret)
            fresh.click("#login-form button[type=submit], #login-form input[type=submit]")
            fresh.wait_for_function("() => document.querySelector('#login-message').textContent.trim() !== ''",
                                    timeout=10_000)
            fresh.fill("#login-secret", secret)
            fresh.click("#login-form button[type=submit], #login-form input[type=submit]")
            fresh.wait_for_selector("#status[data-state=live]", timeout=30_000)
            fresh.close()
        finally:
            browser.close()
    assert not problems, problems
    # The signed-in page had no call refused (the wrong login was on another page, not watched):
    # no management call, no presigned claim frame, no MQTT upgrade.
    assert not [f for f in failed if "/api/v1/" in f or "/mqtt" in f], failed
