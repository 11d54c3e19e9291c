// The operations dashboard: fetch the ops API's dashboard queries every few seconds and draw them (SVG chart, tables).
// Plain browser JavaScript, no library: the page must work on a mesh with no internet access. This file holds the
// token, the API, the counts and the refresh loop, and shares its helpers as window.LT; dashboard-panels.js adds the
// alerts, components, the calls behind a count, audit records and CSV export.
// Every query carries a bearer token, kept in this tab's session storage: it comes from the link
// `lienthong ops login` prints (in the URL fragment, which no server sees; moved off the address bar at once) or is
// pasted into the login box. A 401 forgets it and shows the box again.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const MAX_SERIES = 8; // more series than this fold into "other": a chart with 40 colours says nothing
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(window.location.search);
  const state = {
    window: params.get("window") === "month" ? "month" : "hour",
    group: ["consumer", "gateway"].includes(params.get("group_by")) ? params.get("group_by") : "service",
  };
  let generation = 0; // answers to an older refresh (before a button was pressed) are dropped
  const TOKEN_KEY = "lienthong-ops-token";

  class Unauthorized extends Error {}
  class NotFound extends Error {}

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const pct = (rate) => `${(100 * rate).toFixed(2)}%`;
  // exact latencies are fractions of a millisecond on a fast mesh: keep two significant decimals below 10 ms
  const ms = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v < 1000 ? v.toFixed(1) : fmt(Math.round(v)));
  const OUTCOMES = ["found", "no-data", "not-permitted", "client-error", "provider-failure", "platform-failure"];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- the token -------------------------------------------------------------------------------------------------

  function takeTokenFromLink() {
    // #token=... from `lienthong ops login`: into session storage, then off the address bar and the history entry
    const fragment = new URLSearchParams(window.location.hash.slice(1));
    const token = fragment.get("token");
    if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
    if (window.location.hash) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function claimsOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    } catch (e) {
      return null;
    }
  }

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login").hidden = false;
    $("logout").hidden = true;
    $("who").textContent = "";
    const error = $("login-error");
    error.textContent = message || "";
    error.hidden = !message;
    document.body.setAttribute("data-state", "login");
  }

  function showWho(token) {
    const claims = claimsOf(token) || {};
    const until = claims.exp ? new Date(claims.exp * 1000).toLocaleTimeString("en-GB") : "?";
    const who = claims.role === "operator" ? "operator" : `member ${claims.sub || "?"}`;
    $("who").textContent = `${who} · until ${until}`;
    $("login").hidden = true;
    $("logout").hidden = false;
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized("no token");
    const r = await fetch(path, {
      cache: "no-store", headers: { Accept: "application/json", Authorization: `Bearer ${token}` },
    });
    if (r.status === 401) {
      let detail = "the token was refused";
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not a problem document */ }
      throw new Unauthorized(detail);
    }
    if (r.status === 404) throw new NotFound(path);
    if (!r.ok) {
      let detail = `${r.status}`;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not a problem document */ }
      throw new Error(`${path.split("?")[0]}: ${detail}`);
    }
    return r.json();
  }

  function fillTable(testid, rows, columns, emptyText) {
    const body = $(testid).querySelector("tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = el("tr");
      tr.append(el("td", { colspan: String(columns), class: "empty" }, emptyText));
      body.append(tr);
      return;
    }
    for (const cells of rows) {
      const tr = el("tr");
      for (const cell of cells) tr.append(cell);
      body.append(tr);
    }
  }

  // ---- chart -------------------------------------------------------------------------------------------------------

  function foldSeries(series) {
    if (series.length <= MAX_SERIES) return series;
    const kept = series.slice(0, MAX_SERIES - 1);
    const rest = series.slice(MAX_SERIES - 1);
    const counts = rest[0].counts.map((_, i) => rest.reduce((sum, s) => sum + s.counts[i], 0));
    kept.push({ key: `other (${rest.length})`, total: rest.reduce((sum, s) => sum + s.total, 0), counts, other: true });
    return kept;
  }

  function niceStep(v) {
    // a round step (1, 2 or 5 times a power of ten) so that four steps reach v
    const raw = Math.max(1, v / 4);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function bucketLabel(label, step) {
    return step === "minute" ? label.slice(11, 16) : label.slice(5, 10);
  }

  function drawChart(ts) {
    const box = $("chart");
    const W = 1200, H = 260, L = 56, R = 12, T = 12, B = 28;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `transactions per ${ts.step} by ${ts.group_by}` });
    const series = foldSeries(ts.series);
    const n = ts.buckets.length;
    const stacks = ts.buckets.map((_, i) => series.reduce((sum, s) => sum + s.counts[i], 0));
    const top = 4 * niceStep(Math.max(0, ...stacks));
    const plotW = W - L - R, plotH = H - T - B, slot = plotW / n, bar = Math.max(1, slot * 0.8);
    for (let k = 0; k <= 4; k++) {
      const y = T + plotH - (plotH * k) / 4;
      root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "axis" }));
      root.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, fmt(Math.round((top * k) / 4))));
    }
    const every = ts.step === "minute" ? 10 : 5;
    ts.buckets.forEach((label, i) => {
      const x = L + i * slot + (slot - bar) / 2;
      if ((n - 1 - i) % every === 0) {
        root.append(svg("text", { x: x + bar / 2, y: H - 8, "text-anchor": "middle" }, bucketLabel(label, ts.step)));
      }
      let y = T + plotH;
      series.forEach((s, j) => {
        const v = s.counts[i];
        if (!v) return;
        const h = (plotH * v) / top;
        y -= h;
        const rect = svg("rect", { x, y, width: bar, height: Math.max(h, 0.5), class: `c${s.other ? 8 : j}` });
        rect.append(svg("title", {}, `${label}  ${s.key}: ${fmt(v)}`));
        root.append(rect);
      });
    });
    if (ts.total === 0) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no calls in this window"));
    }
    box.replaceChildren(root);

    const legend = $("legend");
    legend.replaceChildren();
    ts.series.forEach((s, j) => {
      const li = el("li");
      li.append(el("span", { class: `swatch c${j < MAX_SERIES - 1 || ts.series.length <= MAX_SERIES ? j : 8}` }));
      li.append(el("span", {}, s.key));
      li.append(el("span", { class: "count", "data-testid": "series-total", "data-key": s.key }, fmt(s.total)));
      legend.append(li);
    });
  }

  // ---- the sections ------------------------------------------------------------------------------------------------

  // a count that lists its calls when clicked (dashboard-panels.js): filter = {outcome, client, service}
  function countCell(n, filter, testid, key) {
    const td = el("td", { class: "num" });
    const attrs = { type: "button", class: "count", "data-testid": testid };
    if (key !== undefined) attrs["data-key"] = key;
    for (const [k, v] of Object.entries(filter)) if (v) attrs[`data-${k}`] = v;
    td.append(el("button", attrs, fmt(n)));
    return td;
  }

  function showConsumers(top) {
    const rows = top.items.map((c) => [
      el("td", {}, c.consumer),
      countCell(c.count, { client: c.consumer }, "consumer-count", c.consumer),
      el("td", { class: "num" }, pct(c.share)),
      el("td", { class: "num", "data-testid": "consumer-answers", "data-key": c.consumer }, fmt(c.answers)),
      countCell(c.client_errors, { client: c.consumer, outcome: "client-error" }, "consumer-client-errors", c.consumer),
      countCell(c.provider_failures, { client: c.consumer, outcome: "provider-failure" }, "consumer-provider-failures",
        c.consumer),
      countCell(c.platform_failures, { client: c.consumer, outcome: "platform-failure" }, "consumer-platform-failures",
        c.consumer),
    ]);
    fillTable("top-consumers", rows, 7, "no calls in this window");
  }

  function showErrors(errors) {
    const n = errors.total || 0;
    for (const o of OUTCOMES) $(`count-${o}`).textContent = fmt(errors.outcomes[o] || 0);
    $("rate-answers").textContent = `${pct(errors.answer_rate)} of calls`;
    $("rate-client-error").textContent = pct(errors.client_error_rate);
    $("rate-provider-failure").textContent = pct(errors.provider_failure_rate);
    $("rate-platform-failure").textContent = pct(errors.platform_failure_rate);
    $("total").textContent = fmt(n);
    const rows = errors.services.map((s) => [
      el("td", {}, s.service),
      countCell(s.total, { service: s.service }, "service-calls", s.service),
      ...OUTCOMES.map((o) => countCell(s.outcomes[o] || 0, { service: s.service, outcome: o }, `service-${o}`,
        s.service)),
    ]);
    fillTable("errors", rows, 8, "no calls in this window");
  }

  function showLatency(lat) {
    // lat.exact: from the transaction log (exact); else the meter's histogram estimate (no p90 or max there)
    $("latency-source").textContent = lat.exact ? "(ms, exact, transaction log)" : "(ms, estimated from histogram buckets)";
    const rows = lat.items.map((s) => [
      el("td", {}, s.service),
      el("td", { class: "num", "data-testid": "latency-count", "data-key": s.service }, fmt(s.count)),
      el("td", { class: "num", "data-testid": "latency-p50", "data-key": s.service }, ms(s.p50_ms)),
      el("td", { class: "num", "data-testid": "latency-p90", "data-key": s.service }, ms(s.p90_ms)),
      el("td", { class: "num", "data-testid": "latency-p99", "data-key": s.service }, ms(s.p99_ms)),
      el("td", { class: "num", "data-testid": "latency-max", "data-key": s.service }, ms(s.max_ms)),
    ]);
    fillTable("latency", rows, 6, "no calls in this window");
  }

  function windowStart(w) {
    const now = Date.now();
    return new Date(w === "hour" ? now - 3600e3 : now - 30 * 86400e3).toISOString();
  }

  async function exactLatency(estimate, w) {
    // one exact query per service over the window; the histogram estimate where the transaction log is absent (404)
    const from = encodeURIComponent(windowStart(w));
    try {
      const items = await Promise.all(estimate.items.map(async (s) => {
        const exact = await api(`calls/latency?service=${encodeURIComponent(s.service)}&from=${from}`);
        return { service: s.service, ...exact };
      }));
      return { exact: true, items };
    } catch (err) {
      if (err instanceof NotFound) return { exact: false, items: estimate.items };
      throw err;
    }
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 120) return `${seconds.toFixed(1)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function quarantinedCell(g) {
    // snapshot entries the gateway could not build and left out (a service then answers 503); absent from older ones
    const entries = Array.isArray(g.quarantined) ? g.quarantined : [];
    const count = Math.max(g.quarantined_count || 0, entries.length);
    const more = count > entries.length ? ` (+${count - entries.length})` : "";
    const text = entries.map((q) => `${q.kind} ${q.id}`).join(", ") + more;
    const td = el("td", { class: count ? "quarantined" : "", "data-testid": "gateway-quarantined",
      "data-key": g.gateway }, count ? text : "–");
    if (count) td.setAttribute("title", entries.map((q) => `${q.kind} ${q.id}: ${q.reason}`).join("\n"));
    return td;
  }

  function showGateways(gw) {
    const rows = gw.gateways.map((g) => {
      const health = el("td", {});
      health.append(el("span", { class: `pill ${g.status}`, "data-testid": "gateway-status", "data-key": g.gateway },
        g.status));
      return [
        el("td", {}, g.gateway),
        health,
        el("td", { class: "num", "data-testid": "gateway-workers", "data-key": g.gateway }, fmt(g.workers)),
        el("td", { class: "num", "data-testid": "gateway-snapshot-version", "data-key": g.gateway },
          g.snapshot_version === null ? "–" : `v${g.snapshot_version}`),
        el("td", { class: "num", "data-testid": "gateway-snapshot-age", "data-key": g.gateway },
          ago(g.snapshot_age_seconds)),
        el("td", { class: "num" }, g.heartbeat_age_seconds === null ? "never" : `${ago(g.heartbeat_age_seconds)} ago`),
        quarantinedCell(g),
      ];
    });
    fillTable("gateways", rows, 7, "no gateway has reported yet");
    $("gateways-up").textContent = `${gw.gateways.filter((g) => g.status === "up").length} / ${gw.gateways.length}`;
  }

  // ---- refresh loop ------------------------------------------------------------------------------------------------

  async function refresh() {
    const mine = ++generation;
    const w = state.window;
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      if (document.body.getAttribute("data-state") !== "login") showLogin("");
      return;
    }
    showWho(token);
    try {
      const [ts, top, errors, lat, gw, health, panels] = await Promise.all([
        api(`timeseries?window=${w}&group_by=${state.group}`),
        api(`top-consumers?window=${w}&limit=10`),
        api(`errors?window=${w}`),
        api(`service-latency?window=${w}`).then((estimate) => exactLatency(estimate, w)),
        api("gateways"),
        api("health"),
        window.LT.panels ? window.LT.panels.fetch() : null,
      ]);
      if (mine !== generation) return;
      $("window-label").textContent = w === "hour" ? "· last 60 minutes, per minute" : "· last 30 days, per day";
      state.gateway = health.gateway;
      $("served-by").textContent = `served by ${health.gateway}`;
      drawChart(ts);
      showConsumers(top);
      showErrors(errors);
      showLatency(lat);
      showGateways(gw);
      if (panels) window.LT.panels.show(panels);
      $("updated").textContent = new Date().toLocaleTimeString("en-GB");
      $("load-error").hidden = true;
      document.body.setAttribute("data-state", "ready");
      document.body.setAttribute("data-window", w);
      document.body.setAttribute("data-group", state.group);
    } catch (err) {
      if (mine !== generation) return;
      if (err instanceof Unauthorized) {
        showLogin(`the operations API refused the token: ${err.message}; log in again`);
        return;
      }
      $("load-error").textContent = `cannot refresh: ${err.message}`;
      $("load-error").hidden = false;
      document.body.setAttribute("data-state", "error");
    }
  }

  function pressButtons() {
    for (const b of document.querySelectorAll("[data-window]")) {
      if (b.tagName === "BUTTON") b.setAttribute("aria-pressed", String(b.dataset.window === state.window));
    }
    for (const b of document.querySelectorAll("[data-group]")) {
      if (b.tagName === "BUTTON") b.setAttribute("aria-pressed", String(b.dataset.group === state.group));
    }
    const query = new URLSearchParams({ window: state.window, group_by: state.group });
    window.history.replaceState(null, "", `${window.location.pathname}?${query}`);
  }

  function logIn() {
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    refresh();
  }

  function start() {
    takeTokenFromLink();
    document.body.setAttribute("data-address", window.location.hash ? "has-fragment" : "clean");
    $("login-button").addEventListener("click", logIn);
    $("token-input").addEventListener("keydown", (e) => { if (e.key === "Enter") logIn(); });
    $("logout").addEventListener("click", () => showLogin(""));
    for (const b of document.querySelectorAll("button[data-window]")) {
      b.addEventListener("click", () => { state.window = b.dataset.window; pressButtons(); refresh(); });
    }
    for (const b of document.querySelectorAll("button[data-group]")) {
      b.addEventListener("click", () => { state.group = b.dataset.group; pressButtons(); refresh(); });
    }
    $("refresh-seconds").textContent = String(REFRESH_MS / 1000);
    pressButtons();
    refresh();
    window.setInterval(refresh, REFRESH_MS);
  }

  window.LT = { $, el, fmt, api, ms, state, fillTable, windowStart, Unauthorized, NotFound, panels: null };
  document.addEventListener("DOMContentLoaded", start);
})();
