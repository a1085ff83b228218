// regproxy's status page: reads the admin API every two seconds and draws what it says.
//
// No library and nothing from elsewhere (the page's Content-Security-Policy allows this origin
// only).  Every value from the API is written as text (textContent), never as HTML: service names,
// URLs and rule messages come from registries and config centres other people write.
//
// The API is the one `regproxy ctl` reads (docs/operations.md); the page adds nothing to it.  With
// auth_token (or, for the buttons, admin_token) set, the API answers 401 and the page asks for the
// token, keeps it in this tab's sessionStorage and sends it as `Authorization: Bearer`.
"use strict";

const FAST_MS = 2000; // clusters, time series
// The reads run on the sidecar's event loop, between the requests it forwards: with thousands of
// hosts a round takes milliseconds, so the page waits at least this many times as long as its last
// round took (docs/operations.md, Status page).
const BUSY_FACTOR = 100;
const SLOW_EVERY = 3; // everything else, every third refresh
const TOKEN_KEY = "regproxy.token";
const COLORS = { rps: "#2b6cb0", eps: "#c53030", p50: "#2f855a", p99: "#b7791f" };

const state = {
  tick: 0,
  generation: 0, // bumped by restart(): a refresh of an older loop draws nothing more
  timer: null,
  every: FAST_MS, // ms between refreshes (BUSY_FACTOR)
  stopped: false, // waiting for a token
  series: new Map(), // "listener|protocol|service" -> {listener, protocol, service, points: Map(t -> point)}
  seriesSince: 0, // newest point time held (0: fetch the whole window)
  hostTotals: new Map(), // "listener|cluster|address" -> {t, requests, errors}
  subscriptions: new Map(), // cluster name -> subscription view
  slowFailed: [], // what the last round of the slow reads could not read
  stats: null,
};

// --- the API -------------------------------------------------------------------------------------

class AuthNeeded extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const reply = await fetch(path, { ...options, headers, cache: "no-store" });
  let body = null;
  try {
    body = await reply.json();
  } catch (e) {
    body = { err_msg: `${reply.status} ${reply.statusText}: not JSON` };
  }
  if (reply.status === 401 || (reply.status === 403 && token)) {
    throw new AuthNeeded(body.err_msg || `${reply.status}`);
  }
  return { status: reply.status, ok: reply.ok, body };
}

async function read(path) {
  const reply = await api(path);
  if (!reply.ok) throw new Error(`${path}: ${reply.body.err_msg || reply.status}`);
  return reply.body;
}

// --- small DOM helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "muted" }, empty))]));
}

function stateCell(value, text) {
  return el("td", {}, el("span", { class: "state", "data-state": value }, text ?? value));
}

function fmtRate(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function fmtMs(value) {
  return value === null || value === undefined ? "–" : value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

function fmtDuration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m ${s % 60}s`;
  return m ? `${m}m ${s % 60}s` : `${s % 60}s`;
}

function say(text, kind = "ok") {
  const box = $("message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
}

// --- the sidecar, readiness, registries ----------------------------------------------------------

function renderSidecar(info, ready, stats) {
  $("sidecar-id").textContent = stats ? stats.id : "";
  const badge = $("readiness");
  badge.textContent = ready.ready ? "ready" : "not ready";
  badge.dataset.ready = String(ready.ready);
  const facts = [
    ["version", info.version],
    ["data path", info.data_path],
    ["uptime", fmtDuration(info.uptime_s)],
    ["advertised IP", info.advertise_ip],
    ["config", info.config_path || "(none: flags only)"],
    ["log level", info.log_level],
    ["draining", info.draining ? "yes" : "no"],
  ];
  $("sidecar-facts").replaceChildren(
    ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]),
  );
  $("readiness-reasons").replaceChildren(...ready.reasons.map((r) => el("li", { class: "reason" }, r)));
  const registries = Object.entries(ready.detail.registries);
  fill(
    $("registries").tBodies[0],
    registries.map(([name, st]) => el("tr", { "data-registry": name }, el("td", {}, name), stateCell(st))),
    "no registry",
    2,
  );
  const select = $("loglevel");
  if (document.activeElement !== select && info.log_level) select.value = info.log_level;
}

// --- publications ---------------------------------------------------------------------------------

function renderPublications(pubs, stats) {
  const apps = (stats && stats.health.app_check) || {};
  const suspended = (stats && stats.health.suspended_app_ports) || {};
  const rows = [];
  for (const reg of pubs.registries) {
    for (const p of reg.publications) {
      const check = apps[String(p.app_port)];
      const why = suspended[String(p.app_port)];
      let health = el("td", { class: "muted" }, "not checked");
      if (why) health = stateCell("suspended", `suspended: ${why}`);
      else if (check) health = stateCell(check.up ? "up" : "down", check.up ? "up" : `down: ${check.last_error || ""}`);
      rows.push(
        el(
          "tr",
          { "data-service": p.service },
          el("td", { class: "long" }, p.service),
          el("td", { class: "num" }, p.app_port),
          health,
          el("td", {}, reg.registry),
          stateCell(p.registered ? "connected" : "down", p.registered ? "yes" : "no"),
          el("td", { class: "url long" }, p.url),
        ),
      );
    }
  }
  fill($("publications").querySelector("tbody"), rows, pubs.withdrawn ? "withdrawn (draining)" : "nothing published", 6);
}

// --- clusters and their hosts ---------------------------------------------------------------------

function hostRates(listener, cluster, host, now) {
  const key = `${listener}|${cluster}|${host.address}`;
  const before = state.hostTotals.get(key);
  const errors = host.errors ?? 0;
  state.hostTotals.set(key, { t: now, requests: host.total_requests, errors });
  if (!before || now <= before.t) return [null, null];
  const dt = (now - before.t) / 1000;
  return [Math.max(0, host.total_requests - before.requests) / dt, Math.max(0, errors - before.errors) / dt];
}

function foundText(found) {
  if (!found) return "config";
  return found.application ? `${found.how} (${found.application})` : found.how;
}

function renderClusters(clusters) {
  const now = performance.now();
  const list = $("cluster-list");
  const blocks = [];
  const sorted = [...clusters].sort((a, b) => a.listener.localeCompare(b.listener) || a.name.localeCompare(b.name));
  for (const c of sorted) {
    const sub = c.listener === "egress" ? state.subscriptions.get(c.name) : undefined;
    const meta = [`${c.listener}`, `source: ${c.source}`, `load balancer: ${c.lb}`, `${c.hosts.length} host(s)`];
    if (sub) {
      meta.push(sub.watching ? "watching" : "not watching", `migration: ${sub.migration}`);
      if (sub.from_cache) meta.push("from the state file, not yet confirmed");
      if (sub.holding_empty) meta.push("registry said empty: holding the last providers");
    }
    const rows = [...c.hosts]
      .sort((a, b) => a.address.localeCompare(b.address))
      .map((h) => {
        const [rps, eps] = hostRates(c.listener, c.name, h, now);
        const st = h.state || (h.ejected ? "ejected" : h.healthy ? "available" : "unhealthy");
        return el(
          "tr",
          { "data-host": h.address, "data-state": st },
          el("td", {}, h.address),
          el("td", {}, (h.protocols || []).join(", ")),
          el("td", {}, foundText(h.found)),
          el("td", { class: "num" }, h.weight),
          el("td", { class: "num" }, h.effective_weight ?? h.weight),
          el("td", {}, el("span", { class: "state", "data-state": st }, st), h.reason ? el("div", { class: "muted reason" }, h.reason) : null),
          el("td", { class: "num" }, h.active_requests),
          el("td", { class: "num", "data-col": "rps" }, fmtRate(rps)),
          el("td", { class: "num", "data-col": "eps" }, fmtRate(eps)),
          el("td", { class: "num" }, h.total_requests),
        );
      });
    const table = el(
      "table",
      {},
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["host", "protocols", "found by", "weight", "effective", "state", "in flight", "req/s", "err/s", "requests"].map((t, i) =>
            el("th", { class: i >= 3 && i !== 5 ? "num" : null }, t),
          ),
        ),
      ),
      el("tbody", {}),
    );
    fill(table.tBodies[0], rows, "no host", 10);
    blocks.push(
      el(
        "div",
        { class: "cluster", "data-cluster": c.name, "data-listener": c.listener },
        el("h3", {}, c.name),
        el("div", { class: "meta" }, meta.join(" · ")),
        table,
      ),
    );
  }
  list.replaceChildren(...(blocks.length ? blocks : [el("p", { class: "muted" }, "no cluster")]));
  // Forget the totals of hosts no longer shown (a page left open while providers come and go).
  const shown = new Set(clusters.flatMap((c) => c.hosts.map((h) => `${c.listener}|${c.name}|${h.address}`)));
  for (const key of state.hostTotals.keys()) if (!shown.has(key)) state.hostTotals.delete(key);
}

// --- rules ------------------------------------------------------------------------------------------

// Where a route comes from: its cluster's source (the config file, a subscription, a publication).
const ROUTE_FROM = { config: "config file", registry: "subscription", local: "publication" };

function renderRules(rules, routers, clusters) {
  const sources = new Map((clusters || []).map((c) => [`${c.listener}|${c.name}`, c.source]));
  const shown = (value) => (value === "" ? '""' : value); // "": only requests without one
  const routeRows = [];
  for (const [listener, router] of Object.entries(routers || {})) {
    for (const r of router.routes) {
      const m = r.match;
      const match = [
        m.service,
        m.version !== null ? `version=${shown(m.version)}` : null,
        m.group !== null ? `group=${shown(m.group)}` : null,
        m.method ? `method=${m.method}` : null,
      ]
        .filter((x) => x !== null)
        .join(" ");
      const source = sources.get(`${listener}|${r.cluster}`);
      routeRows.push(
        el(
          "tr",
          { "data-route": r.name, "data-from": source || "" },
          el("td", {}, listener),
          el("td", { class: "long" }, r.name),
          el("td", {}, ROUTE_FROM[source] || "–"),
          el("td", { class: "long" }, match),
          el("td", { class: "long" }, r.cluster),
          el("td", { class: "num" }, r.timeout_ms === null ? "default" : `${r.timeout_ms} ms`),
          el("td", { class: "num" }, r.retries),
        ),
      );
    }
  }
  fill($("routes").tBodies[0], routeRows, "no route", 7);
  const inForce = [];
  const refused = [];
  for (const center of rules.centers) {
    const refusedIds = new Set(center.refused.map((r) => r.rule_id));
    for (const r of center.in_force) {
      const st = refusedIds.has(r.rule_id) ? "refused" : "connected";
      inForce.push(
        el(
          "tr",
          { "data-rule": r.rule_id },
          el("td", { class: "long" }, r.rule_id),
          el("td", { class: "long" }, r.source),
          el("td", {}, r.version),
          stateCell(st, st === "refused" ? "in force; a newer version was refused" : "in force"),
        ),
      );
    }
    for (const r of center.refused) {
      refused.push(
        el(
          "tr",
          { "data-rule": r.rule_id, "data-reason": r.reason },
          el("td", { class: "long" }, r.rule_id),
          el("td", { class: "long" }, r.source),
          stateCell("refused", r.reason),
          el("td", { class: "message long" }, r.message),
        ),
      );
    }
  }
  fill($("rules-in-force").tBodies[0], inForce, "no rule from a config center", 4);
  fill($("rules-refused").tBodies[0], refused, "none refused", 4);
}

// --- charts -----------------------------------------------------------------------------------------

function mergeSeries(reply) {
  for (const s of reply.series) {
    const key = `${s.listener}|${s.protocol}|${s.service}`;
    let held = state.series.get(key);
    if (!held) {
      held = { listener: s.listener, protocol: s.protocol, service: s.service, points: new Map() };
      state.series.set(key, held);
    }
    for (const p of s.points) {
      held.points.set(p[0], p);
      if (p[0] > state.seriesSince) state.seriesSince = p[0];
    }
  }
  const horizon = state.seriesSince - Number($("window").value);
  for (const held of state.series.values()) {
    for (const t of held.points.keys()) if (t < horizon) held.points.delete(t);
  }
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * step) return m * step;
  return 10 * step;
}

// lines: [{label, color, values: [[t, v|null]]}]
function drawChart(canvas, lines, t0, t1, unit) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 18, bottom = 16;
  const pw = w - left - right, ph = h - top - bottom;
  let max = 0;
  for (const l of lines) for (const [, v] of l.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  g.font = "10px system-ui, sans-serif";
  g.strokeStyle = "#dde1e8";
  g.fillStyle = "#6b7385";
  g.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = top + ph - (ph * i) / 2;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(left + pw, y);
    g.stroke();
    const label = (max * i) / 2;
    g.fillText(`${label >= 10 ? label.toFixed(0) : label.toFixed(1)}${unit}`, 2, y + 3);
  }
  const span = Math.max(1, t1 - t0);
  g.fillText(`-${Math.round(span / 60)} min`, left, h - 3);
  g.fillText("now", left + pw - 18, h - 3);
  let x = left;
  for (const l of lines) {
    g.strokeStyle = l.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false;
    for (const [t, v] of l.values) {
      if (v === null) {
        pen = false;
        continue;
      }
      const px = left + ((t - t0) / span) * pw, py = top + ph - (v / max) * ph;
      if (pen) g.lineTo(px, py);
      else g.moveTo(px, py);
      pen = true;
    }
    g.stroke();
    g.fillStyle = l.color;
    g.fillText(l.label, x, 11);
    x += g.measureText(l.label).width + 12;
  }
}

function renderCharts() {
  const windowS = Number($("window").value);
  const t1 = state.seriesSince, t0 = t1 - windowS;
  const list = $("chart-list");
  const keys = [...state.series.keys()].sort();
  $("charts-empty").hidden = keys.length > 0;
  const seen = new Set();
  for (const key of keys) {
    seen.add(key);
    const s = state.series.get(key);
    let row = list.querySelector(`[data-series="${CSS.escape(key)}"]`);
    if (!row) {
      row = el(
        "div",
        { class: "chart-row", "data-series": key, "data-service": s.service, "data-listener": s.listener },
        el("div", { class: "name" }, s.service, el("small", {}, `${s.listener} · ${s.protocol}`), el("small", { class: "now" })),
        el("canvas", { class: "rates", "aria-label": `${s.service} requests and errors per second` }),
        el("canvas", { class: "latency", "aria-label": `${s.service} latency` }),
      );
      list.append(row);
    }
    const points = [...s.points.values()].sort((a, b) => a[0] - b[0]);
    const last = points[points.length - 1];
    const now = row.querySelector(".now");
    now.textContent = last ? `${fmtRate(last[1])} req/s · ${fmtRate(last[2])} err/s · p50 ${fmtMs(last[3])} · p99 ${fmtMs(last[4])}` : "";
    row.dataset.rps = last ? String(last[1]) : "0";
    row.dataset.eps = last ? String(last[2]) : "0";
    drawChart(
      row.querySelector("canvas.rates"),
      [
        { label: "req/s", color: COLORS.rps, values: points.map((p) => [p[0], p[1]]) },
        { label: "err/s", color: COLORS.eps, values: points.map((p) => [p[0], p[2]]) },
      ],
      t0,
      t1,
      "",
    );
    drawChart(
      row.querySelector("canvas.latency"),
      [
        { label: "p50", color: COLORS.p50, values: points.map((p) => [p[0], p[3]]) },
        { label: "p99", color: COLORS.p99, values: points.map((p) => [p[0], p[4]]) },
      ],
      t0,
      t1,
      "ms",
    );
  }
  for (const row of [...list.children]) if (!seen.has(row.dataset.series)) row.remove();
}

// --- the refresh loop ----------------------------------------------------------------------------

// Each read on its own: one that fails (say, a sidecar older than this page) leaves the rest drawn.
async function settle(reads) {
  const results = await Promise.allSettled(reads);
  const auth = results.find((r) => r.status === "rejected" && r.reason instanceof AuthNeeded);
  if (auth) throw auth.reason;
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  return [results.map((r) => (r.status === "fulfilled" ? r.value : null)), failed];
}

async function refresh() {
  const slow = state.tick % SLOW_EVERY === 0;
  state.tick += 1;
  // The seconds since the newest point held (all of the window at first, or after the tab was hidden
  // a while): the history is not fetched again every time.
  const windowS = Number($("window").value);
  const since = state.seriesSince ? Math.min(windowS, Math.max(5, Date.now() / 1000 - state.seriesSince + 2)) : windowS;
  const [[clusters, series], failed] = await settle([
    read("/api/v1/clusters?brief"), // without each host's parameters, which the page does not show
    read(`/api/v1/timeseries?seconds=${Math.ceil(since)}`),
  ]);
  if (slow) {
    // stats gives the sidecar's id and its applications' checks here: they change slowly, and its
    // health view costs as much as a cluster's per host.
    const [[stats, dump, ready, pubs, subs, rules, routers], slowFailed] = await settle([
      read("/api/v1/stats"),
      read("/api/v1/config_dump?sidecar"),
      api("/readyz").then((r) => r.body), // 503 when not ready: the body says why
      read("/api/v1/publications"),
      read("/api/v1/subscriptions"),
      read("/api/v1/rules"),
      read("/api/v1/config_dump?allrouters"),
    ]);
    state.slowFailed = slowFailed; // shown until the next slow round, not only for this one
    if (stats) state.stats = stats;
    if (subs) {
      state.subscriptions = new Map();
      for (const reg of subs.registries) for (const s of reg.subscriptions) state.subscriptions.set(s.cluster, s);
    }
    if (dump && ready) renderSidecar(dump.sidecar, ready, state.stats);
    if (pubs) renderPublications(pubs, state.stats);
    if (rules && routers) [state.rules, state.routers] = [rules, routers.routers];
  }
  if (clusters) renderClusters(clusters.clusters);
  if (slow && state.rules && state.routers) renderRules(state.rules, state.routers, clusters && clusters.clusters);
  if (series) {
    mergeSeries(series);
    renderCharts();
  }
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}, every ${(state.every / 1000).toFixed(1)} s`;
  failed.push(...state.slowFailed);
  if (failed.length) throw new Error(failed.join("; "));
}

async function loop() {
  state.timer = null;
  if (state.stopped) return;
  const generation = state.generation;
  const started = performance.now();
  try {
    await refresh();
    state.every = Math.max(FAST_MS, BUSY_FACTOR * (performance.now() - started));
    if (generation !== state.generation) return; // restarted meanwhile: that loop goes on
    if ($("message").dataset.kind === "stale") $("message").hidden = true;
  } catch (e) {
    if (generation !== state.generation) return;
    if (e instanceof AuthNeeded) {
      askToken(e.message);
      return;
    }
    say(`could not read the admin API: ${e.message}`, "error");
    $("message").dataset.kind = "stale";
  }
  if (!document.hidden) state.timer = setTimeout(loop, state.every);
}

function restart() {
  state.stopped = false;
  state.tick = 0;
  state.generation += 1;
  if (state.timer) clearTimeout(state.timer);
  loop();
}

// --- the token ------------------------------------------------------------------------------------

function askToken(why) {
  state.stopped = true;
  $("token-why").textContent = `The admin API answered: ${why}. Enter the token (auth_token, or admin_token for the buttons).`;
  $("token-form").hidden = false;
  $("token").focus();
}

// --- the buttons ------------------------------------------------------------------------------------

async function post(path, body, question) {
  if (!window.confirm(question)) return;
  try {
    const reply = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const b = reply.body;
    let text = b.err_msg || `${reply.status}`;
    if (b.changes && b.changes.length) text += `: ${b.changes.join("; ")}`;
    if (b.needs_restart && b.needs_restart.length) text += ` (needs a restart: ${b.needs_restart.join(", ")})`;
    if (b.errors) text += `: ${b.errors.map((p) => `${p.key}: ${p.problem}`).join("; ")}`;
    say(`${path}: ${text}`, reply.ok ? "ok" : "error");
    restart();
  } catch (e) {
    if (e instanceof AuthNeeded) askToken(e.message);
    else say(`${path}: ${e.message}`, "error");
  }
}

async function loadLevels() {
  // The levels the API takes, from its own OpenAPI document: one list, kept by the server.
  let levels = ["debug", "info", "warning", "error", "critical"];
  try {
    const doc = await read("/openapi.json");
    levels = doc.components.schemas.LogLevelReply.properties.level.enum || levels;
  } catch (e) {
    if (e instanceof AuthNeeded) throw e;
  }
  $("loglevel").replaceChildren(...levels.map((l) => el("option", { value: l }, l)));
}

function wire() {
  $("set-loglevel").addEventListener("click", () => {
    const level = $("loglevel").value;
    post("/api/v1/loglevel", { level }, `Set this sidecar's log level to ${level}?`);
  });
  $("reload").addEventListener("click", () =>
    post("/api/v1/reload", undefined, "Re-read the config file and apply what changed?"),
  );
  $("drain").addEventListener("click", () =>
    post(
      "/api/v1/drain",
      undefined,
      "Drain this sidecar? It withdraws every publication from the registries, waits for requests in flight, then stops. It cannot be undone.",
    ),
  );
  $("token-button").addEventListener("click", () => askToken("enter or change the token"));
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("token-form").hidden = true;
    start();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-form").hidden = true;
    start();
  });
  $("window").addEventListener("change", () => {
    state.seriesSince = 0; // fetch the whole new window
    restart();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !state.stopped && !state.timer) loop();
  });
}

async function start() {
  try {
    await loadLevels();
  } catch (e) {
    askToken(e.message);
    return;
  }
  restart();
}

wire();
start();
