// Shoal's cold-chain dashboard: the fleet on a map and in a table, live over MQTT (WebSocket),
// alerts, each truck's shadow and charts, and claim verification.
//
// Data flow: MQTT messages and REST answers only change state in memory and mark what changed
// (`dirty`); `render` applies the changes to the DOM at most ~4 times a second. Each truck owns
// one table row and one set of SVG elements, created once and then only updated in place.

import { signRequest, presign, encodePath, selfTest } from "./sigv4.js";
import { MqttClient } from "./mqtt.js";

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

const DEFAULT_MAX_TEMP = -18;
const DEFAULT_MAX_HUMIDITY = 85;
const TRAIL_MAX = 200;
const TRAIL_SPACING_M = 1000;
const READINGS_MAX = 500;
const ALERTS_MAX = 200;
const RENDER_EVERY_MS = 250;
const BIG_FLEET = 200; // trucks; above this the page saves work (rarer trails and tooltips, smaller dots)
const LABELS_UP_TO = 60; // trucks; more would clutter the map (the selected one is always labelled)
const EARTH_RADIUS_M = 6371008.8;
const M_PER_DEG = (Math.PI / 180) * EARTH_RADIUS_M;
const CREDS_KEY = "shoal.dashboard.credentials";
const THEME_KEY = "shoal.dashboard.theme";
const SVG_NS = "http://www.w3.org/2000/svg";

const SUBSCRIPTIONS = [
  { topic: "fleet/+/telemetry", qos: 0 },
  { topic: "fleet/+/alerts", qos: 1 },
  { topic: "$aws/things/+/shadow/update/documents", qos: 0 },
  { topic: "$aws/things/+/shadow/name/route/update/documents", qos: 0 },
  { topic: "$aws/events/presence/+/+", qos: 0 },
];

const SEVERITY_BY_KIND = {
  temperature: "critical",
  door: "critical",
  presence: "critical",
  humidity: "warning",
  corridor: "warning",
  connectivity: "warning",
};

const ONLINE_ORDER = { online: 0, stale: 1, offline: 2, unknown: 3 };

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

let creds = null;
/** name → truck state (see `truckState`). */
const trucks = new Map();
/** client id → `{ connected, at, version, reason }` from lifecycle events. */
const presence = new Map();
/** route name → `{ name, points: [[lat, lon]...], corridorM }`. */
const routes = new Map();
/** Trucks whose route shadow was asked for (later changes arrive over MQTT). */
const routeTried = new Set();
/** Trucks whose row or marker must be redrawn. */
const dirty = new Set();
/** Alerts received since the last render, oldest first. */
const newAlerts = [];
let alertTotal = 0;
let selected = null;
let detailDirty = false;
let fleetChanged = false;
let routesChanged = false;
let projectionDirty = true;
let lastRefit = 0;
let projection = null;
let renderTimer = 0;
let lastRender = 0;
let tickDue = true;
let sort = { key: "name", dir: 1 };
let order = [];
let mqtt = null;
let mqttStatus = "connecting…";
let rowObserver = null;
const counters = { messages: 0, lastSecond: 0, rate: 0, bad: 0, total: 0 };
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
const decoder = new TextDecoder();
const clientId = "dashboard-" + Math.random().toString(16).slice(2, 10);

function truckState(name) {
  return {
    name,
    route: "",
    attributes: {},
    registered: false,
    lastSeen: 0, // real time of the last message
    gapEma: 0, // mean real time between messages
    firstTs: null,
    lastTs: null,
    tel: null, // the newest reading
    trail: [], // [ts, lat, lon], by ts
    trailDrawn: 0,
    trailChanged: false,
    readings: [], // { ts, temp, hum }, by ts
    alerts: new Map(), // kind → the raising event
    shadow: null, // { reported, desired, delta, version, timestamp }
    routeName: "",
    messages: 0,
    dom: null,
  };
}

/** The truck `name`, created when `create` (a new row and marker at the next render). */
function getTruck(name, create = true) {
  let t = trucks.get(name);
  if (!t && create) {
    t = truckState(name);
    trucks.set(name, t);
    fleetChanged = true;
    dirty.add(t);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An HTML element: `h("td", { class: "x", "data-truck": n }, "text", child...)`. */
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const c of children) if (c !== undefined && c !== null) e.append(c);
  return e;
}

function s(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** Sets text only when it changed (cheap to call on every render). */
function setText(node, text) {
  if (node.__text !== text) {
    node.__text = text;
    node.textContent = text;
  }
}

function setAttr(node, name, value) {
  const key = "__a_" + name;
  if (node[key] !== value) {
    node[key] = value;
    node.setAttribute(name, value);
  }
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const fixed = (v, d = 1) => (num(v) === null ? "—" : v.toFixed(d));

function isoSeconds(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** `HH:MM:SS` UTC of a timestamp (telemetry runs on the simulator's clock). */
function clock(ms) {
  if (num(ms) === null) return "—";
  return new Date(ms).toISOString().slice(11, 19);
}

function dateTime(ms) {
  if (num(ms) === null) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, " UTC");
}

function ago(ms, now) {
  if (!ms) return "—";
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 1) return "now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function cap(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

let errorTimer = 0;
/** Shows a problem in the error line (never throws). */
function showError(text) {
  try {
    const line = $("error");
    setText($("error-text"), String(text));
    line.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => (line.hidden = true), 30000);
  } catch {
    /* the page is not there yet */
  }
}

// ---------------------------------------------------------------------------------------------
// Credentials and REST
// ---------------------------------------------------------------------------------------------

/** `#key=...&secret=...` (then removed from the address bar), else the tab's session storage. */
function loadCredentials() {
  const hash = location.hash.replace(/^#/, "");
  if (hash) {
    const found = {};
    for (const part of hash.split("&")) {
      const i = part.indexOf("=");
      if (i < 0) continue;
      try {
        found[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
      } catch {
        /* a malformed escape: ignore that part */
      }
    }
    if (found.key && found.secret) {
      saveCredentials({ key: found.key, secret: found.secret });
      history.replaceState(null, "", location.pathname + location.search);
    }
  }
  try {
    const c = JSON.parse(sessionStorage.getItem(CREDS_KEY) || "null");
    if (c && typeof c.key === "string" && typeof c.secret === "string" && c.key && c.secret) return c;
  } catch {
    /* unreadable: ask again */
  }
  return null;
}

function saveCredentials(c) {
  try {
    sessionStorage.setItem(CREDS_KEY, JSON.stringify(c));
  } catch {
    /* storage off: the credentials last as long as the page */
  }
}

/**
 * A SigV4-signed call. `path` is a string (already encoded) or an array of raw segments.
 * Resolves to `{ ok, status, json, text, error }`; never rejects.
 */
async function api(method, path, { query, body, service = "iot" } = {}) {
  const sent = Array.isArray(path) ? encodePath(path) : path;
  const bodyText = body === undefined ? undefined : JSON.stringify(body);
  let resp;
  try {
    const signed = signRequest({
      method,
      host: location.host,
      path: sent,
      query,
      body: bodyText,
      contentType: bodyText === undefined ? undefined : "application/json",
      accessKeyId: creds.key,
      secretAccessKey: creds.secret,
      service,
    });
    resp = await fetch(signed.url, {
      method,
      headers: signed.headers,
      body: bodyText,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    return { ok: false, status: 0, json: null, text: "", error: `${method} ${sent}: ${e?.message || e}` };
  }
  let text = "";
  try {
    text = await resp.text();
  } catch {
    /* an interrupted body */
  }
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON (the HTML report) */
  }
  if (!resp.ok) {
    const why = (json && (json.message || json.Message)) || text.slice(0, 200) || resp.statusText;
    return { ok: false, status: resp.status, json, text, error: `${method} ${sent}: HTTP ${resp.status} ${why}` };
  }
  return { ok: true, status: resp.status, json, text, error: "" };
}

function presignedUrl(path, query, service = "iot") {
  return presign({
    host: location.host,
    path,
    query,
    accessKeyId: creds.key,
    secretAccessKey: creds.secret,
    service,
    expires: 300,
  });
}

// ---------------------------------------------------------------------------------------------
// The registry and shadows
// ---------------------------------------------------------------------------------------------

function isFleetThing(thing) {
  return (
    thing.thingTypeName === "refrigerated-truck" ||
    (thing.attributes && typeof thing.attributes.route === "string") ||
    /^truck-/.test(thing.thingName || "")
  );
}

/** Lists every thing (pages of 250); answers false when the key was refused. */
async function loadThings() {
  let token;
  let pages = 0;
  do {
    const r = await api("GET", "/api/v1/things", { query: { maxResults: 250, nextToken: token } });
    if (!r.ok) {
      if (r.status === 403 && pages === 0) return r;
      showError(r.error);
      return r;
    }
    for (const thing of r.json?.things || []) {
      if (!thing || typeof thing.thingName !== "string" || !isFleetThing(thing)) continue;
      const t = getTruck(thing.thingName);
      t.registered = true;
      t.attributes = thing.attributes || {};
      if (!t.route && typeof t.attributes.route === "string") t.route = t.attributes.route;
      dirty.add(t);
    }
    token = r.json?.nextToken || undefined;
    pages++;
  } while (token && pages < 200);
  fleetChanged = true;
  $("trucks-empty").textContent = trucks.size ? "" : "No trucks registered yet.";
  scheduleRender();
  return { ok: true };
}

/** Runs `jobs` (functions returning promises) with at most `n` at a time. */
async function pool(jobs, n) {
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const job = jobs[next++];
      try {
        await job();
      } catch (e) {
        console.warn(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, jobs.length) }, worker));
}

/** The named shadow `route` of trucks: one truck per route name is enough (a few on 404). */
async function loadRoutes() {
  const byRoute = new Map();
  const loners = [];
  for (const t of trucks.values()) {
    if (routeTried.has(t.name)) continue;
    // The registered route (telemetry names the direction driven: `copenhagen-hamburg`).
    const route = t.attributes.route || t.route;
    if (!route) loners.push(t.name);
    else if (routes.has(route)) continue;
    else if (!byRoute.has(route)) byRoute.set(route, [t.name]);
    else if (byRoute.get(route).length < 3) byRoute.get(route).push(t.name);
  }
  const jobs = [];
  for (const [name, candidates] of byRoute) {
    jobs.push(async () => {
      for (const thing of candidates) {
        if (routes.has(name)) return;
        if (await loadRoute(thing)) return;
      }
    });
  }
  for (const thing of loners.slice(0, 50)) jobs.push(() => loadRoute(thing));
  await pool(jobs, 4);
}

async function loadRoute(thing) {
  routeTried.add(thing);
  // Listing first: a missing shadow is then no failed request in the console.
  const names = await api("GET", ["api", "things", "shadow", "ListNamedShadowsForThing", thing], {
    query: { pageSize: 100 },
    service: "iotdata",
  });
  if (names.ok && Array.isArray(names.json?.results) && !names.json.results.includes("route")) return false;
  const r = await api("GET", ["things", thing, "shadow"], { query: { name: "route" }, service: "iotdata" });
  if (!r.ok) {
    if (r.status !== 404) showError(r.error);
    return false;
  }
  return applyRoute(thing, r.json?.state?.desired);
}

/** Takes a route from a named shadow's desired state; answers whether it had one. */
function applyRoute(thing, desired) {
  if (!desired || !Array.isArray(desired.points)) return false;
  const points = desired.points.filter(
    (p) => Array.isArray(p) && num(p[0]) !== null && num(p[1]) !== null && Math.abs(p[0]) <= 90 && Math.abs(p[1]) <= 180,
  );
  if (points.length < 2) return false;
  const t = getTruck(thing, false);
  const name = typeof desired.name === "string" && desired.name ? desired.name : t?.route || thing;
  if (t) t.routeName = name;
  routes.set(name, { name, points, corridorM: num(desired.corridorM) ?? 0 });
  routesChanged = true;
  projectionDirty = true;
  scheduleRender();
  return true;
}

async function loadShadow(t) {
  const r = await api("GET", ["things", t.name, "shadow"], { service: "iotdata" });
  if (!r.ok) {
    if (r.status === 404) {
      t.shadow = { reported: {}, desired: {}, delta: {}, version: null, missing: true };
    } else {
      showError(r.error);
      return;
    }
  } else {
    const st = r.json?.state || {};
    t.shadow = {
      reported: st.reported || {},
      desired: st.desired || {},
      delta: st.delta || diff(st.desired || {}, st.reported || {}),
      version: r.json?.version ?? null,
      timestamp: r.json?.timestamp ?? null,
    };
  }
  if (t.name === selected) detailDirty = true;
  dirty.add(t);
  scheduleRender();
}

/** What of `desired` differs from `reported` (AWS's delta, computed for live documents). */
function diff(desired, reported) {
  const out = {};
  for (const [k, v] of Object.entries(desired || {})) {
    const r = reported ? reported[k] : undefined;
    if (v && typeof v === "object" && !Array.isArray(v) && r && typeof r === "object" && !Array.isArray(r)) {
      const d = diff(v, r);
      if (Object.keys(d).length) out[k] = d;
    } else if (JSON.stringify(v) !== JSON.stringify(r)) {
      out[k] = v;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Live data
// ---------------------------------------------------------------------------------------------

function onMessage(topic, payload) {
  counters.messages++;
  counters.total++;
  let msg;
  try {
    msg = JSON.parse(decoder.decode(payload));
  } catch {
    counters.bad++;
    return;
  }
  if (!msg || typeof msg !== "object" || Array.isArray(msg)) {
    counters.bad++;
    return;
  }
  const parts = topic.split("/");
  try {
    if (parts[0] === "fleet" && parts.length === 3) {
      if (parts[2] === "telemetry") onTelemetry(parts[1], msg);
      else if (parts[2] === "alerts") onAlert(parts[1], msg);
    } else if (parts[0] === "$aws" && parts[1] === "things") {
      if (parts.length === 6 && parts[3] === "shadow" && parts[4] === "update" && parts[5] === "documents") {
        onShadowDocuments(parts[2], msg);
      } else if (parts.length === 8 && parts[3] === "shadow" && parts[4] === "name" && parts[5] === "route") {
        applyRoute(parts[2], msg.current?.state?.desired);
      }
    } else if (parts[0] === "$aws" && parts[1] === "events" && parts[2] === "presence" && parts.length === 5) {
      onPresence(parts[4], parts[3], msg);
    }
  } catch (e) {
    counters.bad++;
    console.warn("cannot handle a message on", topic, e);
  }
  scheduleRender();
}

/** Inserts `item` into `list` kept sorted by `key(item)` (late readings arrive out of order). */
function insertSorted(list, item, key, max) {
  list.push(item);
  let i = list.length - 1;
  const k = key(item);
  while (i > 0 && key(list[i - 1]) > k) {
    list[i] = list[i - 1];
    i--;
  }
  list[i] = item;
  if (list.length > max) list.shift();
}

function onTelemetry(name, m) {
  const t = getTruck(name);
  const now = Date.now();
  if (t.lastSeen) {
    const gap = now - t.lastSeen;
    t.gapEma = t.gapEma ? t.gapEma * 0.9 + gap * 0.1 : gap;
  }
  t.lastSeen = now;
  t.messages++;
  const ts = num(m.ts) ?? now;
  if (t.firstTs === null || ts < t.firstTs) t.firstTs = ts;
  if (t.lastTs === null || ts >= t.lastTs) {
    t.lastTs = ts;
    t.tel = m;
    if (typeof m.route === "string" && m.route && t.route !== m.route) t.route = m.route;
  }
  const lat = num(m.lat);
  const lon = num(m.lon);
  if (lat !== null && lon !== null && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) addTrail(t, ts, lat, lon);
  const temp = num(m.tempC);
  const hum = num(m.humidity);
  if (temp !== null || hum !== null) insertSorted(t.readings, { ts, temp, hum }, (r) => r.ts, READINGS_MAX);
  dirty.add(t);
  if (t.name === selected) detailDirty = true;
}

/** Rough distance in metres (equirectangular; fine for the few km between trail points). */
function distanceM(lat1, lon1, lat2, lon2) {
  const k = Math.cos((((lat1 + lat2) / 2) * Math.PI) / 180);
  return M_PER_DEG * Math.hypot(lat2 - lat1, (lon2 - lon1) * k);
}

/**
 * Adds a position to the trail. The last point is always the newest position; the ones
 * before it are at least TRAIL_SPACING_M apart, so 200 points cover a useful stretch of road
 * however often a truck reports. A late (older) reading does not change the trail.
 */
function addTrail(t, ts, lat, lon) {
  const tr = t.trail;
  const n = tr.length;
  if (n && ts < tr[n - 1][0]) return;
  if (n >= 2 && distanceM(tr[n - 2][1], tr[n - 2][2], lat, lon) < TRAIL_SPACING_M) tr[n - 1] = [ts, lat, lon];
  else {
    tr.push([ts, lat, lon]);
    if (tr.length > TRAIL_MAX) tr.shift();
  }
  t.trailChanged = true;
}

function alertSeverity(m, kind, state) {
  if (state === "recovered") return "info";
  if (typeof m.severity === "string" && /^(info|warning|critical)$/.test(m.severity)) return m.severity;
  return SEVERITY_BY_KIND[kind] || "warning";
}

function onAlert(name, m) {
  const kind = typeof m.kind === "string" && m.kind ? m.kind : "alert";
  // The SQL fallback rule has no `state`: every message is an excursion.
  const state = m.state === "recovered" ? "recovered" : "raised";
  const truckName = typeof m.truck === "string" && m.truck ? m.truck : name;
  const t = getTruck(truckName);
  if (state === "raised") t.alerts.set(kind, m);
  else t.alerts.delete(kind);
  newAlerts.push({ truck: truckName, kind, state, severity: alertSeverity(m, kind, state), msg: m, at: Date.now() });
  if (newAlerts.length > ALERTS_MAX) newAlerts.shift();
  alertTotal++;
  dirty.add(t);
  if (truckName === selected) detailDirty = true;
}

function onShadowDocuments(name, m) {
  const t = getTruck(name, false);
  if (!t) return;
  const cur = m.current;
  if (!cur || typeof cur !== "object") {
    counters.bad++;
    return;
  }
  const st = cur.state || {};
  const reported = st.reported || {};
  const desired = st.desired || {};
  t.shadow = {
    reported,
    desired,
    delta: diff(desired, reported),
    version: cur.version ?? null,
    timestamp: m.timestamp ?? null,
  };
  dirty.add(t);
  if (name === selected) detailDirty = true;
}

function onPresence(id, type, m) {
  const connected = (m.eventType || type) === "connected";
  const version = num(m.versionNumber) ?? 0;
  const prev = presence.get(id);
  // A disconnection of an older connection than the one we know connected is stale.
  if (prev && prev.connected && !connected && version && prev.version && version < prev.version) return;
  presence.set(id, { connected, at: Date.now(), version, reason: m.disconnectReason || "" });
  const t = getTruck(id, false);
  if (t) dirty.add(t);
}

/** `online`, `stale` (connected, but nothing for a while), `offline` or `unknown`. */
function onlineState(t, now) {
  const staleAfter = Math.min(120000, Math.max(5000, 8 * (t.gapEma || 0)));
  const recent = t.lastSeen && now - t.lastSeen < staleAfter;
  const p = presence.get(t.name);
  if (p) {
    if (p.connected) return recent || now - p.at < staleAfter ? "online" : "stale";
    if (t.lastSeen > p.at) return recent ? "online" : "stale";
    return "offline";
  }
  if (!t.lastSeen) return "unknown";
  return recent ? "online" : "stale";
}

/** Whether the newest reading is beyond a limit (shown as an alert even before one is raised). */
function overLimit(t) {
  const m = t.tel;
  if (!m) return false;
  const limits = limitsOf(t);
  const temp = num(m.tempC);
  const hum = num(m.humidity);
  return (temp !== null && temp > limits.temp) || (hum !== null && hum > limits.hum);
}

function markerState(online, t) {
  if (online === "offline") return "offline";
  if (t.alerts.size || overLimit(t)) return "alert";
  if (online === "stale") return "stale";
  if (online === "unknown") return "offline";
  return "ok";
}

function startMqtt() {
  mqtt = new MqttClient({
    clientId,
    keepalive: 30,
    subscriptions: SUBSCRIPTIONS,
    url: () =>
      (location.protocol === "https:" ? "wss://" : "ws://") +
      location.host +
      presignedUrl("/mqtt", undefined, "iotdevicegateway"),
    onMessage,
    onStatus: (text) => {
      mqttStatus = text;
      const el = $("status");
      el.textContent = text;
      el.dataset.state = text === "live" ? "live" : text.startsWith("offline") ? "offline" : "connecting";
      if (text === "live") {
        // Anything missed while away (new trucks, routes written meanwhile).
        if (mqtt && mqtt.wasLive) refreshRegistry();
        if (mqtt) mqtt.wasLive = true;
      }
    },
    onError: (text) => showError(text),
  });
  mqtt.start();
}

// ---------------------------------------------------------------------------------------------
// Rendering: scheduling
// ---------------------------------------------------------------------------------------------

function scheduleRender() {
  if (renderTimer) return;
  const every = trucks.size > BIG_FLEET ? 2 * RENDER_EVERY_MS : RENDER_EVERY_MS;
  const wait = Math.max(0, every - (performance.now() - lastRender));
  renderTimer = setTimeout(() => requestAnimationFrame(render), wait);
}

function render() {
  renderTimer = 0;
  lastRender = performance.now();
  const now = Date.now();
  try {
    if (fleetChanged) buildFleet();
    maybeRefit(now);
    if (projectionDirty) drawMapBase();
    else if (routesChanged) drawRoutes();
    const all = tickDue;
    tickDue = false;
    const list = all ? trucks.values() : dirty;
    for (const t of list) updateTruck(t, now, all);
    dirty.clear();
    if (all) {
      updateCounts(now);
      applyOrder();
    }
    if (newAlerts.length) flushAlerts();
    if (detailDirty) renderDetail(now);
  } catch (e) {
    console.error(e);
    showError(`display error: ${e?.message || e}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Fleet table
// ---------------------------------------------------------------------------------------------

function buildFleet() {
  fleetChanged = false;
  const body = $("trucks-body");
  const dots = $("layer-dots");
  const labels = $("layer-labels");
  const trails = $("layer-trails");
  for (const t of trucks.values()) {
    if (t.dom) continue;
    const cells = {};
    const row = h("tr", { "data-truck": t.name, tabindex: "0" });
    for (const key of ["name", "route", "online", "seen", "temp", "humidity", "speed", "door", "alerts"]) {
      cells[key] = h("td", { class: key + (["temp", "humidity", "speed"].includes(key) ? " num" : "") });
      row.append(cells[key]);
    }
    cells.nameText = h("span", { class: "truck-name" }, t.name);
    cells.dot = h("span", { class: "dot", "aria-hidden": "true" });
    cells.name.append(cells.dot, cells.nameText);
    body.append(row);
    rowObserver?.observe(row);
    const trail = s("polyline", { class: "trail", "data-trail": t.name, points: "" });
    trails.append(trail);
    const dot = s("circle", { class: "truck-dot", "data-truck": t.name, r: "6", cx: "-100", cy: "-100" });
    const title = s("title");
    dot.append(title);
    dots.append(dot);
    const label = s("text", { class: "truck-label", "data-label": t.name, x: "-100", y: "-100" });
    label.textContent = t.name;
    labels.append(label);
    t.dom = { row, cells, trail, dot, title, label, visible: false, rowInView: false, x: 0, y: 0, titleAt: 0 };
    row.__truck = t;
    dirty.add(t);
  }
  $("trucks-empty").textContent = trucks.size ? "" : "No trucks yet.";
  updateClaimTrucks();
  tickDue = true;
}

/** Redraws one truck's row and marker; `all`: also the time-dependent parts. */
function updateTruck(t, now, all) {
  if (!t.dom) return;
  const { row, cells, dot, title, label } = t.dom;
  const m = t.tel || {};
  const online = onlineState(t, now);
  const state = markerState(online, t);
  const big = trucks.size > BIG_FLEET;
  const isSelected = t.name === selected;
  const temp = num(m.tempC);
  const hum = num(m.humidity);
  const door = typeof m.door === "string" ? m.door : "—";
  const kinds = t.alerts.size ? [...t.alerts.keys()] : [];

  // The row: only while it is scrolled into view (the observer marks it dirty on arrival).
  if (t.dom.rowInView || !rowObserver) {
    const limits = limitsOf(t);
    setText(cells.route, t.route || "—");
    setText(cells.online, online === "unknown" ? "—" : online);
    setAttr(cells.online, "data-online", online);
    setText(cells.seen, ago(t.lastSeen, now));
    setText(cells.temp, fixed(temp));
    setAttr(cells.temp, "class", "temp num" + (temp !== null && temp > limits.temp ? " over" : ""));
    setText(cells.humidity, fixed(hum, 0));
    setAttr(cells.humidity, "class", "humidity num" + (hum !== null && hum > limits.hum ? " over" : ""));
    setText(cells.speed, fixed(num(m.speedKmh), 0));
    setText(cells.door, door);
    setAttr(cells.door, "class", "door" + (door === "open" ? " over" : ""));
    setText(cells.alerts, kinds.join(", "));
    setAttr(cells.dot, "data-state", state);
  }
  setAttr(row, "class", `state-${state}` + (isSelected ? " selected" : "") + (state === "alert" ? " has-alert" : ""));
  setAttr(row, "data-state", state);

  // The marker.
  const showLabel = isSelected || trucks.size <= LABELS_UP_TO || state === "alert";
  const last = t.trail.length ? t.trail[t.trail.length - 1] : null;
  if (last && projection) {
    const [x, y] = project(last[1], last[2]);
    setAttr(dot, "cx", x.toFixed(1));
    setAttr(dot, "cy", y.toFixed(1));
    t.dom.x = x;
    t.dom.y = y;
    t.dom.visible = true;
  }
  if (showLabel && t.dom.visible) {
    setAttr(label, "x", (t.dom.x + 9).toFixed(1));
    setAttr(label, "y", (t.dom.y + 4).toFixed(1));
  }
  setAttr(dot, "data-state", state);
  setAttr(dot, "class", "truck-dot" + (isSelected ? " selected" : ""));
  setAttr(dot, "r", isSelected ? "8" : big ? "4" : "6");
  setAttr(label, "class", "truck-label" + (showLabel && t.dom.visible ? "" : " hidden") + (isSelected ? " selected" : ""));
  // The tooltip: always for small fleets, else every few seconds (and on hover).
  if (!big || isSelected || now - (t.dom.titleAt || 0) > 5000) {
    t.dom.titleAt = now;
    setText(title, tooltip(t, online));
  }

  // The trail, at most once a second per truck (it is the expensive part), less in big fleets.
  if (t.trailChanged && projection && (now - t.trailDrawn >= (big ? 3000 : 1000) || (all && !big) || isSelected)) {
    drawTrail(t);
  }
}

function tooltip(t, online) {
  const m = t.tel || {};
  const kinds = [...t.alerts.keys()];
  return (
    `${t.name}${t.route ? " · " + t.route : ""}\n` +
    `temperature ${fixed(num(m.tempC))} °C · humidity ${fixed(num(m.humidity), 0)} % · speed ${fixed(num(m.speedKmh), 0)} km/h\n` +
    `door ${typeof m.door === "string" ? m.door : "—"} · ${online}${kinds.length ? " · alerts: " + kinds.join(", ") : ""}`
  );
}

function drawTrail(t) {
  let pts = "";
  for (const p of t.trail) {
    const [x, y] = project(p[1], p[2]);
    pts += Math.round(x * 10) / 10 + "," + Math.round(y * 10) / 10 + " ";
  }
  t.dom.trail.setAttribute("points", pts);
  setAttr(t.dom.trail, "data-state", t.name === selected ? "selected" : "");
  t.trailDrawn = Date.now();
  t.trailChanged = false;
}

function limitsOf(t) {
  const desired = t.shadow?.desired || {};
  const tempAlert = t.alerts.get("temperature");
  const humAlert = t.alerts.get("humidity");
  return {
    temp: num(desired.maxTempC) ?? num(tempAlert?.limit) ?? num(tempAlert?.maxTempC) ?? DEFAULT_MAX_TEMP,
    hum: num(desired.maxHumidity) ?? num(humAlert?.limit) ?? DEFAULT_MAX_HUMIDITY,
  };
}

function updateCounts(now) {
  let online = 0;
  let alerts = 0;
  for (const t of trucks.values()) {
    if (onlineState(t, now) === "online") online++;
    alerts += t.alerts.size;
  }
  setText($("count-trucks"), String(trucks.size));
  setText($("count-online"), String(online));
  setText($("count-alerts"), String(alerts));
  $("count-alerts").parentElement.classList.toggle("hot", alerts > 0);
  setText($("count-rate"), String(counters.rate));
  setText($("footer-client"), `MQTT client ${clientId}`);
  setText($("count-messages"), String(counters.total));
  setText($("count-bad"), String(counters.bad));
}

function sortValue(t, key, now) {
  const m = t.tel || {};
  switch (key) {
    case "route":
      return t.route || "\uffff";
    case "online":
      return ONLINE_ORDER[onlineState(t, now)];
    case "seen":
      return t.lastSeen ? now - t.lastSeen : Infinity;
    case "temp":
      return num(m.tempC) ?? -Infinity;
    case "humidity":
      return num(m.humidity) ?? -Infinity;
    case "speed":
      return num(m.speedKmh) ?? -Infinity;
    case "door":
      return m.door === "open" ? 0 : 1;
    case "alerts":
      return -t.alerts.size;
    default:
      return t.name;
  }
}

/** Sorts and filters the rows (moves rows only when the order changed). */
function applyOrder() {
  const now = Date.now();
  const filter = $("filter").value.trim().toLowerCase();
  const alertsOnly = $("filter-alerts").checked;
  const list = [...trucks.values()].filter((t) => t.dom);
  const key = sort.key;
  list.sort((a, b) => {
    const va = sortValue(a, key, now);
    const vb = sortValue(b, key, now);
    let c = typeof va === "string" ? collator.compare(va, vb) : va < vb ? -1 : va > vb ? 1 : 0;
    if (c === 0) c = collator.compare(a.name, b.name);
    else c *= sort.dir;
    return c;
  });
  let visible = 0;
  for (const t of list) {
    const show =
      (!filter || t.name.toLowerCase().includes(filter) || (t.route || "").toLowerCase().includes(filter)) &&
      (!alertsOnly || t.alerts.size > 0 || overLimit(t));
    if (t.dom.row.hidden === show) t.dom.row.hidden = !show;
    if (show) visible++;
  }
  const same = list.length === order.length && list.every((t, i) => order[i] === t);
  if (!same) {
    const frag = document.createDocumentFragment();
    for (const t of list) frag.append(t.dom.row);
    $("trucks-body").append(frag);
    order = list;
  }
  if (trucks.size) $("trucks-empty").textContent = visible ? "" : "No truck matches the filter.";
}

// ---------------------------------------------------------------------------------------------
// Map
// ---------------------------------------------------------------------------------------------

function setupMap() {
  const map = $("map");
  for (const id of ["graticule", "corridors", "routes", "trails", "places", "dots", "labels", "scale"]) {
    map.append(s("g", { id: "layer-" + id, class: "layer-" + id }));
  }
  map.addEventListener("mouseover", (ev) => {
    const name = ev.target.getAttribute?.("data-truck");
    const t = name && trucks.get(name);
    if (t?.dom) setText(t.dom.title, tooltip(t, onlineState(t, Date.now())));
  });
  map.addEventListener("click", (ev) => {
    const target = ev.target.closest?.("[data-truck],[data-label]");
    if (target) select(target.getAttribute("data-truck") || target.getAttribute("data-label"));
  });
  if (window.ResizeObserver) {
    new ResizeObserver(() => {
      projectionDirty = true;
      scheduleRender();
    }).observe(map);
  }
}

/** The bounding box of the routes and the trucks' newest positions. */
function dataBounds() {
  let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
  const add = (lat, lon) => {
    if (lat < minLat) minLat = lat;
    if (lat > maxLat) maxLat = lat;
    if (lon < minLon) minLon = lon;
    if (lon > maxLon) maxLon = lon;
  };
  for (const r of routes.values()) for (const p of r.points) add(p[0], p[1]);
  for (const t of trucks.values()) {
    const p = t.trail[t.trail.length - 1];
    if (p) add(p[1], p[2]);
  }
  if (minLat === Infinity) return null;
  return { minLat, maxLat, minLon, maxLon };
}

/** Refits the projection when a truck went outside the area shown (at most every 2 s). */
function maybeRefit(now) {
  if (projectionDirty || !projection) return;
  if (!projection.fromData) {
    if (routes.size || [...trucks.values()].some((t) => t.trail.length)) projectionDirty = true;
    return;
  }
  if (now - lastRefit < 2000) return;
  const b = dataBounds();
  if (!b) return;
  const f = projection.fit;
  if (b.minLat < f.minLat || b.maxLat > f.maxLat || b.minLon < f.minLon || b.maxLon > f.maxLon) {
    projectionDirty = true;
  }
}

function computeProjection() {
  const map = $("map");
  const rect = map.getBoundingClientRect();
  const w = Math.max(200, Math.round(rect.width) || 800);
  const hgt = Math.max(160, Math.round(rect.height) || 480);
  map.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  const data = dataBounds();
  const b = data || { minLat: 47, maxLat: 60, minLon: 3, maxLon: 20 };
  // At least ~0.5° across, so one truck does not fill the screen.
  const pad = (lo, hi, min) => {
    const span = hi - lo;
    return span >= min ? [lo, hi] : [lo - (min - span) / 2, hi + (min - span) / 2];
  };
  const [minLat, maxLat] = pad(b.minLat, b.maxLat, 0.5);
  const [minLon, maxLon] = pad(b.minLon, b.maxLon, 0.5);
  const latC = (minLat + maxLat) / 2;
  const lonC = (minLon + maxLon) / 2;
  const k = Math.cos((latC * Math.PI) / 180);
  const margin = 0.1;
  const sx = (w * (1 - 2 * margin)) / Math.max(1e-6, (maxLon - minLon) * k);
  const sy = (hgt * (1 - 2 * margin)) / Math.max(1e-6, maxLat - minLat);
  const scale = Math.min(sx, sy);
  // What is on screen (the fit area plus whatever the aspect ratio adds), and a fit box with
  // half the margin: positions inside it do not make the map refit.
  const halfLon = w / 2 / scale / k;
  const halfLat = hgt / 2 / scale;
  projection = {
    w,
    h: hgt,
    latC,
    lonC,
    k,
    scale,
    view: { minLat: latC - halfLat, maxLat: latC + halfLat, minLon: lonC - halfLon, maxLon: lonC + halfLon },
    fit: {
      minLat: latC - halfLat * (1 - margin),
      maxLat: latC + halfLat * (1 - margin),
      minLon: lonC - halfLon * (1 - margin),
      maxLon: lonC + halfLon * (1 - margin),
    },
    metresPerPx: M_PER_DEG / scale,
    fromData: !!data,
  };
}

function project(lat, lon) {
  const p = projection;
  return [p.w / 2 + (lon - p.lonC) * p.k * p.scale, p.h / 2 - (lat - p.latC) * p.scale];
}

/** Redraws what depends on the projection: graticule, routes, scale, all markers and trails. */
function drawMapBase() {
  projectionDirty = false;
  lastRefit = Date.now();
  computeProjection();
  drawGraticule();
  drawRoutes();
  drawScale();
  for (const t of trucks.values()) {
    if (!t.dom) continue;
    t.trailChanged = true;
    t.trailDrawn = 0;
    dirty.add(t);
  }
  $("map-empty").hidden = !!dataBounds();
}

function niceStep(span, target) {
  const raw = span / target;
  const steps = [0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 30];
  return steps.find((st) => st >= raw) || 45;
}

function degLabel(v, pos, neg) {
  const a = Math.abs(v);
  const text = Number.isInteger(Math.round(a * 100) / 100) ? String(Math.round(a)) : String(Math.round(a * 100) / 100);
  return `${text}°${v >= 0 ? pos : neg}`;
}

function drawGraticule() {
  const g = $("layer-graticule");
  g.replaceChildren();
  const p = projection;
  const v = p.view;
  const latStep = niceStep(v.maxLat - v.minLat, 5);
  const lonStep = niceStep(v.maxLon - v.minLon, 6);
  for (let lat = Math.ceil(v.minLat / latStep) * latStep; lat <= v.maxLat; lat += latStep) {
    const [, y] = project(lat, p.lonC);
    g.append(s("line", { x1: 0, x2: p.w, y1: y.toFixed(1), y2: y.toFixed(1), class: "grid" }));
    const t = s("text", { x: 6, y: (y - 4).toFixed(1), class: "grid-label" });
    t.textContent = degLabel(lat, "N", "S");
    g.append(t);
  }
  for (let lon = Math.ceil(v.minLon / lonStep) * lonStep; lon <= v.maxLon; lon += lonStep) {
    const [x] = project(p.latC, lon);
    g.append(s("line", { x1: x.toFixed(1), x2: x.toFixed(1), y1: 0, y2: p.h, class: "grid" }));
    const t = s("text", { x: (x + 4).toFixed(1), y: 14, class: "grid-label" });
    t.textContent = degLabel(lon, "E", "W");
    g.append(t);
  }
}

function drawScale() {
  const g = $("layer-scale");
  g.replaceChildren();
  const mpp = projection.metresPerPx;
  const target = 120 * mpp;
  const pow = Math.pow(10, Math.floor(Math.log10(target)));
  const metres = [5, 2, 1].map((m) => m * pow).find((m) => m <= target) || pow;
  const px = metres / mpp;
  const x = 16;
  const y = projection.h - 18;
  g.append(s("rect", { x: x - 6, y: y - 18, width: (px + 12).toFixed(1), height: 26, rx: 4, class: "scale-bg" }));
  g.append(s("path", { d: `M${x} ${y - 5}V${y}H${(x + px).toFixed(1)}V${y - 5}`, class: "scale-bar" }));
  const label = s("text", { x: x + px / 2, y: y - 7, class: "scale-label", "text-anchor": "middle" });
  label.textContent = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
  g.append(label);
}

function drawRoutes() {
  routesChanged = false;
  if (!projection) return;
  const corridors = $("layer-corridors");
  const lines = $("layer-routes");
  const places = $("layer-places");
  corridors.replaceChildren();
  lines.replaceChildren();
  places.replaceChildren();
  const seen = new Set();
  for (const r of routes.values()) {
    const pts = r.points.map((p) => project(p[0], p[1]).map((v) => v.toFixed(1)).join(",")).join(" ");
    if (r.corridorM > 0) {
      const width = Math.max(3, (2 * r.corridorM) / projection.metresPerPx);
      corridors.append(s("polyline", { points: pts, class: "corridor", "stroke-width": width.toFixed(1), "data-route": r.name }));
    }
    const line = s("polyline", { points: pts, class: "route", "data-route": r.name });
    const title = s("title");
    title.textContent = `planned route ${r.name}` + (r.corridorM ? ` (corridor ±${r.corridorM} m)` : "");
    line.append(title);
    lines.append(line);
    // The ends, named after the route (`hamburg-copenhagen`).
    const names = r.name.split("-");
    const ends = [
      [r.points[0], names.length === 2 ? names[0] : ""],
      [r.points[r.points.length - 1], names.length === 2 ? names[1] : ""],
    ];
    for (const [p, name] of ends) {
      const key = `${p[0].toFixed(2)},${p[1].toFixed(2)}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const [x, y] = project(p[0], p[1]);
      places.append(s("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 3.5, class: "place" }));
      if (name) {
        const t = s("text", { x: (x + 6).toFixed(1), y: (y - 6).toFixed(1), class: "place-label" });
        t.textContent = cap(name);
        places.append(t);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Alerts
// ---------------------------------------------------------------------------------------------

function alertText(a) {
  const m = a.msg;
  const v = m.value;
  const limit = m.limit ?? m.maxTempC ?? null;
  const unit = { temperature: " °C", humidity: " %", door: " km/h", corridor: " m" }[a.kind] || "";
  const show = (x) => (typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(1)) + unit : String(x));
  switch (a.kind) {
    case "door":
      return a.state === "raised" ? `door open while moving${num(v) !== null ? ` at ${show(v)}` : ""}` : "door closed";
    case "presence":
      return a.state === "raised" ? "someone inside the cargo space" : "cargo space empty again";
    case "connectivity":
      return a.state === "raised" ? "lost connection" : "connection back";
  }
  let text = a.state === "raised" ? "" : "back to normal";
  if (v !== undefined && v !== null) text += (text ? ": " : "") + show(v);
  if (limit !== undefined && limit !== null) text += ` (limit ${show(limit)})`;
  if (!text && m.message) text = String(m.message);
  return text;
}

function flushAlerts() {
  const list = $("alerts");
  const frag = document.createDocumentFragment();
  for (let i = newAlerts.length - 1; i >= 0; i--) {
    const a = newAlerts[i];
    const ts = num(a.msg.ts) ?? a.at;
    const li = h(
      "li",
      {
        class: `alert sev-${a.severity}`,
        "data-kind": a.kind,
        "data-truck": a.truck,
        "data-state": a.state,
        "data-severity": a.severity,
        tabindex: "0",
      },
      h("time", { datetime: new Date(ts).toISOString(), title: dateTime(ts) }, clock(ts)),
      h("span", { class: "alert-truck" }, a.truck),
      h("span", { class: "alert-kind" }, a.kind),
      h("span", { class: "alert-state" }, a.state),
      h("span", { class: "alert-text" }, alertText(a)),
    );
    frag.append(li);
  }
  newAlerts.length = 0;
  list.prepend(frag);
  while (list.childElementCount > ALERTS_MAX) list.lastElementChild.remove();
  setText($("alerts-count"), `${alertTotal} received${alertTotal > ALERTS_MAX ? `, newest ${ALERTS_MAX} shown` : ""}`);
}

// ---------------------------------------------------------------------------------------------
// Selected truck
// ---------------------------------------------------------------------------------------------

function select(name) {
  if (!name || !trucks.has(name)) return;
  const prev = selected ? trucks.get(selected) : null;
  selected = name;
  const t = trucks.get(name);
  if (prev) {
    dirty.add(prev);
    prev.trailChanged = true;
  }
  dirty.add(t);
  t.trailChanged = true;
  $("detail").dataset.truck = name;
  detailDirty = true;
  $("desired-result").textContent = "";
  fillDesiredForm(t, true);
  loadShadow(t);
  if (!claimTouched) {
    $("claim-truck").value = name;
    fillClaimWindow();
  }
  // The selected marker and trail on top of the others.
  if (t.dom) {
    t.dom.dot.parentNode.append(t.dom.dot);
    t.dom.trail.parentNode.append(t.dom.trail);
  }
  scheduleRender();
}

function renderDetail(now) {
  detailDirty = false;
  const t = selected ? trucks.get(selected) : null;
  $("detail-empty").hidden = !!t;
  $("detail-body").hidden = !t;
  if (!t) return;
  const m = t.tel || {};
  const online = onlineState(t, now);
  const state = markerState(online, t);
  const limits = limitsOf(t);
  setText($("detail-title"), t.name + (t.route ? ` · ${t.route}` : ""));
  const badge = $("detail-state");
  badge.hidden = false;
  setText(badge, state === "alert" ? `${t.alerts.size} alert${t.alerts.size > 1 ? "s" : ""}` : online);
  badge.dataset.state = state;
  const reported = t.shadow?.reported || {};
  const p = presence.get(t.name);
  const facts = [
    ["Temperature", `${fixed(num(m.tempC))} °C`, num(m.tempC) !== null && m.tempC > limits.temp],
    ["Limit", `${limits.temp} °C · ${limits.hum} %`],
    ["Humidity", `${fixed(num(m.humidity), 0)} %`, num(m.humidity) !== null && m.humidity > limits.hum],
    ["Speed", `${fixed(num(m.speedKmh), 0)} km/h`],
    ["Door", m.door ?? "—", m.door === "open"],
    ["Presence", m.presence === true ? "someone inside" : m.presence === false ? "none" : "—", m.presence === true],
    ["Setpoint", num(m.setpoint ?? reported.setpoint) !== null ? `${m.setpoint ?? reported.setpoint} °C` : "—"],
    ["Compressor", reported.compressor ?? "—", reported.compressor === "failed"],
    ["Firmware", reported.firmware ?? "—"],
    ["Position", num(m.lat) !== null ? `${m.lat.toFixed(4)}, ${m.lon.toFixed(4)}` : "—"],
    ["Last reading", dateTime(t.lastTs)],
    ["Connection", p ? (p.connected ? "connected" : `disconnected${p.reason ? " (" + p.reason + ")" : ""}`) : online],
    ["Active alerts", t.alerts.size ? [...t.alerts.keys()].join(", ") : "none", t.alerts.size > 0],
    ["Readings kept", `${t.readings.length} (seq ${m.seq ?? "—"})`],
  ];
  const dl = $("detail-facts");
  if (dl.childElementCount !== facts.length) {
    dl.replaceChildren(...facts.map(([k]) => h("div", { class: "fact" }, h("dt", null, k), h("dd"))));
  }
  facts.forEach(([, v, bad], i) => {
    const dd = dl.children[i].lastElementChild;
    setText(dd, String(v));
    dd.classList.toggle("over", !!bad);
  });
  setText($("chart-temp-limit"), `limit ${limits.temp} °C`);
  setText($("chart-humidity-limit"), `limit ${limits.hum} %`);
  drawChart($("chart-temp"), t.readings, "temp", limits.temp, "--chart-temp");
  drawChart($("chart-humidity"), t.readings, "hum", limits.hum, "--chart-hum");
  const sh = t.shadow;
  renderJson($("shadow-reported"), sh ? sh.reported : null, sh?.missing ? "no shadow" : "loading…");
  renderJson($("shadow-desired"), sh ? sh.desired : null, sh?.missing ? "no shadow" : "loading…");
  renderJson($("shadow-delta"), sh ? sh.delta : null, sh?.missing ? "no shadow" : "loading…");
  setText($("shadow-version"), sh && sh.version !== null && sh.version !== undefined ? `version ${sh.version}` : "");
  fillDesiredForm(t, false);
}

/** Pretty JSON with coloured tokens, built from text nodes (never HTML). */
function renderJson(pre, value, emptyText) {
  const text = value === null || value === undefined ? emptyText : JSON.stringify(value, null, 2);
  if (pre.__json === text) return;
  pre.__json = text;
  pre.replaceChildren();
  if (value === null || value === undefined) {
    pre.append(h("span", { class: "j-muted" }, text));
    return;
  }
  if (typeof value === "object" && Object.keys(value).length === 0) {
    pre.append(h("span", { class: "j-muted" }, "{}"));
    return;
  }
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0;
  for (let m; (m = re.exec(text)); ) {
    if (m.index > last) pre.append(text.slice(last, m.index));
    if (m[1]) {
      pre.append(h("span", { class: m[2] ? "j-key" : "j-str" }, m[1]));
      if (m[2]) pre.append(m[2]);
    } else if (m[3]) pre.append(h("span", { class: "j-lit" }, m[3]));
    else pre.append(h("span", { class: "j-num" }, m[4]));
    last = re.lastIndex;
  }
  if (last < text.length) pre.append(text.slice(last));
}

/** Fills the desired-state form from the shadow (unless the operator is editing it). */
function fillDesiredForm(t, force) {
  const form = $("desired-form");
  if (!force && form.contains(document.activeElement)) return;
  if (!force && form.__truck === t.name && form.__version === t.shadow?.version) return;
  form.__truck = t.name;
  form.__version = t.shadow?.version;
  const d = t.shadow?.desired || {};
  const r = t.shadow?.reported || {};
  $("desired-setpoint").value = num(d.setpoint ?? r.setpoint) ?? "";
  $("desired-max-temp").value = num(d.maxTempC) ?? "";
  $("desired-max-temp").placeholder = String(DEFAULT_MAX_TEMP);
  $("desired-max-humidity").value = num(d.maxHumidity) ?? "";
  $("desired-max-humidity").placeholder = String(DEFAULT_MAX_HUMIDITY);
}

async function submitDesired(ev) {
  ev.preventDefault();
  const t = selected ? trucks.get(selected) : null;
  if (!t) return;
  const desired = {};
  const fields = [
    ["setpoint", "desired-setpoint"],
    ["maxTempC", "desired-max-temp"],
    ["maxHumidity", "desired-max-humidity"],
  ];
  const current = t.shadow?.desired || {};
  const reported = t.shadow?.reported || {};
  for (const [key, id] of fields) {
    const raw = $(id).value.trim();
    if (raw === "") continue;
    const v = Number(raw);
    if (!Number.isFinite(v)) {
      $("desired-result").textContent = `${key} is not a number`;
      return;
    }
    // The form shows the desired value, else the reported one: only changes are sent.
    if ((current[key] ?? reported[key]) !== v) desired[key] = v;
  }
  if (!Object.keys(desired).length) {
    $("desired-result").textContent = "nothing to change";
    return;
  }
  $("desired-result").textContent = "updating…";
  const r = await api("POST", ["things", t.name, "shadow"], { body: { state: { desired } }, service: "iotdata" });
  if (!r.ok) {
    $("desired-result").textContent = "refused";
    showError(r.error);
    return;
  }
  $("desired-result").textContent = `sent: ${Object.entries(desired).map(([k, v]) => `${k} ${v}`).join(", ")}`;
  document.activeElement?.blur?.();
  loadShadow(t);
}

// ---------------------------------------------------------------------------------------------
// Charts
// ---------------------------------------------------------------------------------------------

let palette = null;
function colours() {
  if (!palette) {
    const cs = getComputedStyle(document.documentElement);
    const v = (n, d) => cs.getPropertyValue(n).trim() || d;
    palette = {
      fg: v("--fg", "#e6edf3"),
      muted: v("--muted", "#8b98a5"),
      grid: v("--grid", "#2a3541"),
      crit: v("--crit", "#f85149"),
      "--chart-temp": v("--chart-temp", "#4aa3ff"),
      "--chart-hum": v("--chart-hum", "#a371f7"),
      font: v("--font-ui", "system-ui, sans-serif"),
    };
  }
  return palette;
}

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map(
  (x) => x * 1000,
);

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const pow = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * pow).find((st) => st >= raw) || 10 * pow;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return { ticks: out, step };
}

/** A line chart of `readings[field]` over `ts` with a dashed limit line (labelled above it). */
function drawChart(canvas, readings, field, limit, colourVar) {
  const cssW = canvas.clientWidth;
  const cssH = canvas.clientHeight;
  if (!cssW || !cssH) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
  }
  const ctx = canvas.getContext("2d");
  const c = colours();
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  ctx.font = `11px ${c.font}`;
  const pts = [];
  for (const r of readings) if (r[field] !== null) pts.push(r);
  const L = 42, R = 10, T = 10, B = 22;
  const w = cssW - L - R;
  const hh = cssH - T - B;
  if (!pts.length) {
    ctx.fillStyle = c.muted;
    ctx.textAlign = "center";
    ctx.fillText("no readings yet", cssW / 2, cssH / 2);
    return;
  }
  let t0 = pts[0].ts;
  let t1 = pts[pts.length - 1].ts;
  if (t1 - t0 < 60000) {
    const mid = (t0 + t1) / 2;
    t0 = mid - 30000;
    t1 = mid + 30000;
  }
  let lo = limit;
  let hi = limit;
  for (const r of pts) {
    if (r[field] < lo) lo = r[field];
    if (r[field] > hi) hi = r[field];
  }
  const padY = Math.max((hi - lo) * 0.12, 0.5);
  lo -= padY;
  hi += padY;
  const x = (ts) => L + ((ts - t0) / (t1 - t0)) * w;
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * hh;

  // Grid and axes.
  ctx.strokeStyle = c.grid;
  ctx.lineWidth = 1;
  ctx.fillStyle = c.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const { ticks } = niceTicks(lo, hi, 4);
  for (const v of ticks) {
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(L, yy);
    ctx.lineTo(L + w, yy);
    ctx.stroke();
    ctx.fillText(String(Math.round(v * 10) / 10), L - 6, yy);
  }
  const tStep = TIME_STEPS.find((st) => (t1 - t0) / st <= Math.max(2, Math.floor(w / 80))) || 86400000;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let ts = Math.ceil(t0 / tStep) * tStep; ts <= t1; ts += tStep) {
    const xx = Math.round(x(ts)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(xx, T);
    ctx.lineTo(xx, T + hh);
    ctx.stroke();
    const label = tStep < 60000 ? clock(ts) : clock(ts).slice(0, 5);
    ctx.fillText(label, xx, T + hh + 5);
  }
  ctx.strokeStyle = c.muted;
  ctx.beginPath();
  ctx.moveTo(L + 0.5, T);
  ctx.lineTo(L + 0.5, T + hh + 0.5);
  ctx.lineTo(L + w, T + hh + 0.5);
  ctx.stroke();

  // The limit.
  const ly = Math.round(y(limit)) + 0.5;
  ctx.strokeStyle = c.crit;
  ctx.setLineDash([5, 4]);
  ctx.beginPath();
  ctx.moveTo(L, ly);
  ctx.lineTo(L + w, ly);
  ctx.stroke();
  ctx.setLineDash([]);

  // The series (gaps over 10× the usual spacing are not joined).
  ctx.save();
  ctx.beginPath();
  ctx.rect(L, T, w, hh);
  ctx.clip();
  const typical = pts.length > 1 ? (pts[pts.length - 1].ts - pts[0].ts) / (pts.length - 1) : 0;
  ctx.strokeStyle = c[colourVar];
  ctx.lineWidth = 1.6;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let prev = null;
  for (const r of pts) {
    const xx = x(r.ts);
    const yy = y(r[field]);
    if (!prev || (typical && r.ts - prev.ts > typical * 10)) ctx.moveTo(xx, yy);
    else ctx.lineTo(xx, yy);
    prev = r;
  }
  ctx.stroke();
  // Readings over the limit.
  ctx.fillStyle = c.crit;
  for (const r of pts) {
    if (r[field] > limit) {
      ctx.beginPath();
      ctx.arc(x(r.ts), y(r[field]), 2, 0, Math.PI * 2);
      ctx.fill();
    }
  }
  // The newest value.
  const lastR = pts[pts.length - 1];
  ctx.fillStyle = lastR[field] > limit ? c.crit : c[colourVar];
  ctx.beginPath();
  ctx.arc(x(lastR.ts), y(lastR[field]), 3.5, 0, Math.PI * 2);
  ctx.fill();
  ctx.restore();
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

let claimTouched = false;
let claimSeq = 0;

function updateClaimTrucks() {
  const sel = $("claim-truck");
  const names = [...trucks.keys()].sort(collator.compare);
  if (sel.__names === names.join("\n")) return;
  sel.__names = names.join("\n");
  const current = sel.value;
  sel.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  if (current && trucks.has(current)) sel.value = current;
  else if (selected) sel.value = selected;
  if (!$("claim-from").value) fillClaimWindow();
}

/** The window of the readings seen for the chosen truck: an hour before the first to the last. */
function fillClaimWindow() {
  const t = trucks.get($("claim-truck").value);
  if (!t || t.firstTs === null) return false;
  $("claim-from").value = isoSeconds(Math.floor((t.firstTs - 3600000) / 1000) * 1000);
  $("claim-to").value = isoSeconds(Math.ceil((t.lastTs + 1) / 1000) * 1000);
  return true;
}

async function submitClaim(ev) {
  ev.preventDefault();
  const thing = $("claim-truck").value;
  // An untouched window follows the readings seen so far.
  if (!claimTouched) fillClaimWindow();
  let from = $("claim-from").value.trim();
  let to = $("claim-to").value.trim();
  if (thing && (!from || !to) && fillClaimWindow()) {
    from = $("claim-from").value.trim();
    to = $("claim-to").value.trim();
  }
  const verdict = $("claim-verdict");
  if (!thing || !from || !to) {
    verdict.dataset.verdict = "error";
    verdict.textContent = "Choose a truck and a window (RFC 3339 times or epoch milliseconds).";
    return;
  }
  const query = {
    thing,
    from,
    to,
    maxTemp: $("claim-max-temp").value.trim() || undefined,
    maxHumidity: $("claim-max-humidity").value.trim() || undefined,
  };
  const seq = ++claimSeq;
  verdict.dataset.verdict = "pending";
  verdict.textContent = `Verifying ${thing}…`;
  $("claim-reasons").replaceChildren();
  $("claim-submit").disabled = true;
  showReport(query);
  const r = await api("GET", "/api/v1/claims/verify", { query });
  $("claim-submit").disabled = false;
  if (seq !== claimSeq) return;
  if (!r.ok || !r.json) {
    verdict.dataset.verdict = "error";
    verdict.textContent = `Cannot verify: ${r.error || "no answer"}`;
    showError(r.error || "claim verification failed");
    return;
  }
  const rep = r.json;
  const word = typeof rep.verdict === "string" ? rep.verdict : "inconclusive";
  verdict.dataset.verdict = word;
  verdict.replaceChildren(
    "Verdict for ",
    h("b", null, thing),
    ": ",
    h("span", { class: "verdict-word" }, word),
    h(
      "span",
      { class: "muted" },
      ` · ${rep.readings ?? 0} readings` +
        (rep.tempRangeC ? ` · ${rep.tempRangeC[0]} to ${rep.tempRangeC[1]} °C` : "") +
        ` · ${(rep.temperatureExcursions || []).length} temperature and ${(rep.humidityExcursions || []).length} humidity excursions` +
        ` · ${(rep.doorOpenings || []).length} door openings · ${(rep.gaps || []).length} gaps`,
    ),
  );
  const reasons = Array.isArray(rep.reasons) ? rep.reasons : [];
  const shown = reasons.slice(0, 12).map((x) => h("li", null, String(x)));
  if (reasons.length > shown.length) {
    shown.push(h("li", { class: "muted" }, `… and ${reasons.length - shown.length} more (see the report below)`));
  }
  $("claim-reasons").replaceChildren(...shown);
}

/**
 * The HTML report in the frame, from a presigned URL. Should the server refuse the URL (it
 * did while the claim route rejected the `X-Amz-*` query parameters), the report is fetched
 * with a signed request instead and shown from `srcdoc`, restyled with this page's sheet.
 */
function showReport(query) {
  const frame = $("claim-report");
  frame.hidden = false;
  frame.removeAttribute("srcdoc");
  const seq = claimSeq;
  frame.onload = async () => {
    frame.onload = null;
    let ok = false;
    try {
      ok = !!frame.contentDocument?.getElementById("verdict");
    } catch {
      ok = true; // not readable: trust it
    }
    if (ok || seq !== claimSeq) return;
    const r = await api("GET", "/api/v1/claims/verify", { query: { ...query, format: "html" } });
    if (seq !== claimSeq) return;
    if (!r.ok) {
      showError(r.error);
      return;
    }
    // Its own styles would break this page's policy (even while parsing): they go first.
    const html = r.text.replace(/<style[\s\S]*?<\/style>/gi, "").replace(/<script[\s\S]*?<\/script>/gi, "");
    const doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("style, script, link, meta[http-equiv]").forEach((n) => n.remove());
    doc.head.append(Object.assign(doc.createElement("link"), { rel: "stylesheet", href: new URL("style.css", location.href).href }));
    doc.documentElement.classList.add("claim-report-html");
    doc.body.classList.add("claim-report-doc");
    frame.srcdoc = "<!doctype html>" + doc.documentElement.outerHTML;
  };
  frame.src = presignedUrl("/api/v1/claims/verify", { ...query, format: "html" });
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  palette = null;
  detailDirty = true;
  scheduleRender();
}

/** Rows scrolled into view get their cells updated; the others wait until they are seen. */
function setupRowObserver() {
  if (!window.IntersectionObserver) return;
  rowObserver = new IntersectionObserver(
    (entries) => {
      for (const e of entries) {
        const t = e.target.__truck;
        if (!t?.dom) continue;
        t.dom.rowInView = e.isIntersecting;
        if (e.isIntersecting) dirty.add(t);
      }
      scheduleRender();
    },
    { root: document.querySelector(".table-wrap"), rootMargin: "300px 0px" },
  );
}

function setupUi() {
  let theme = null;
  try {
    theme = localStorage.getItem(THEME_KEY);
  } catch {
    /* no storage */
  }
  if (theme !== "light" && theme !== "dark") {
    theme = window.matchMedia?.("(prefers-color-scheme: light)").matches ? "light" : "dark";
  }
  applyTheme(theme);
  $("theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "light" ? "dark" : "light";
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch {
      /* no storage */
    }
    applyTheme(next);
  });
  $("error-close").addEventListener("click", () => ($("error").hidden = true));
  $("logout").addEventListener("click", () => {
    try {
      sessionStorage.removeItem(CREDS_KEY);
    } catch {
      /* no storage */
    }
    location.reload();
  });
  const rowOf = (ev) => ev.target.closest?.("tr[data-truck]");
  $("trucks-body").addEventListener("click", (ev) => {
    const row = rowOf(ev);
    if (row) select(row.dataset.truck);
  });
  $("trucks-body").addEventListener("keydown", (ev) => {
    const row = rowOf(ev);
    if (row && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      select(row.dataset.truck);
    }
  });
  $("alerts").addEventListener("click", (ev) => {
    const li = ev.target.closest?.("li[data-truck]");
    if (li) select(li.dataset.truck);
  });
  for (const th of document.querySelectorAll("#trucks th[data-sort]")) {
    th.tabIndex = 0;
    const go = () => {
      const key = th.dataset.sort;
      sort = { key, dir: sort.key === key ? -sort.dir : 1 };
      for (const other of document.querySelectorAll("#trucks th[data-sort]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
      tickDue = true;
      scheduleRender();
    };
    th.addEventListener("click", go);
    th.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        go();
      }
    });
  }
  $("trucks").querySelector('th[data-sort="name"]').setAttribute("aria-sort", "ascending");
  const refilter = () => {
    tickDue = true;
    scheduleRender();
  };
  $("filter").addEventListener("input", refilter);
  $("filter-alerts").addEventListener("change", refilter);
  $("claim-form").addEventListener("submit", (ev) => submitClaim(ev).catch((e) => showError(e.message)));
  $("claim-truck").addEventListener("change", () => {
    claimTouched = false;
    fillClaimWindow();
  });
  for (const id of ["claim-from", "claim-to"]) $(id).addEventListener("input", () => (claimTouched = true));
  $("claim-reset").addEventListener("click", () => {
    claimTouched = false;
    if (!fillClaimWindow()) showError("no readings seen for this truck yet: enter the window by hand");
  });
  $("desired-form").addEventListener("submit", (ev) => submitDesired(ev).catch((e) => showError(e.message)));
  setupMap();
  setupRowObserver();
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  const msg = $("login-message");
  msg.hidden = !message;
  msg.textContent = message || "";
  if (creds?.key) $("login-key").value = creds.key;
  $("login-key").focus();
}

async function refreshRegistry() {
  const r = await loadThings();
  if (r.ok) await loadRoutes();
  return r;
}

async function startDashboard() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  const r = await loadThings();
  if (!r.ok && r.status === 403) {
    showLogin(`The key was refused: ${r.json?.message || r.error}`);
    return;
  }
  startMqtt();
  setInterval(() => {
    counters.rate = counters.messages - counters.lastSecond;
    counters.lastSecond = counters.messages;
    tickDue = true;
    scheduleRender();
  }, 1000);
  // New trucks and routes now and then (messages add unknown trucks at once anyway).
  setInterval(() => refreshRegistry().catch((e) => console.warn(e)), 120000);
  await loadRoutes();
}

function main() {
  window.addEventListener("unhandledrejection", (ev) => {
    ev.preventDefault();
    showError(`unexpected: ${ev.reason?.message || ev.reason}`);
  });
  window.addEventListener("error", (ev) => {
    showError(`unexpected: ${ev.message}`);
  });
  setupUi();
  if (!selfTest()) {
    showError("this browser computes SHA-256 wrongly: requests cannot be signed");
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("login-key").value.trim();
    const secret = $("login-secret").value.trim();
    if (!key || !secret) return;
    creds = { key, secret };
    saveCredentials(creds);
    $("login-secret").value = "";
    startDashboard().catch((e) => showError(e.message));
  });
  creds = loadCredentials();
  if (!creds) {
    $("status").textContent = "offline: signed out";
    $("status").dataset.state = "offline";
    showLogin("");
    return;
  }
  startDashboard().catch((e) => showError(e.message));
}

main();
