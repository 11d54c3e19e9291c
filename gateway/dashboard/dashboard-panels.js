// The dashboard's panels beside the counts (dashboard.js): firing alerts, component health, the calls behind any
// count (the transaction log, /calls), a call's audit record (/audit?xroad_id=...), and CSV export of every table.
"use strict";

(function () {
  const { $, el, fmt, api, ms, state, fillTable, windowStart, NotFound } = window.LT;
  const CALLS_SHOWN = 100; // the page lists this many; the CSV button exports every matching call
  let filter = null; // the calls panel's filter: {outcome, client, service, from, to}

  // ---- alerts and components --------------------------------------------------------------------------------------

  async function fetchPanels() {
    const [alerts, components] = await Promise.all([api("alerts"), api("components")]);
    return { alerts, components };
  }

  function pill(status, testid, key) {
    const td = el("td", {});
    td.append(el("span", { class: `pill ${status}`, "data-testid": testid, "data-key": key }, status));
    return td;
  }

  function showAlerts(alerts) {
    // firing first: the panel's point is what needs a look now
    const order = { firing: 0, "no-data": 2, ok: 1 };
    const rules = [...alerts.rules].sort((a, b) => order[a.state] - order[b.state]);
    fillTable("alerts", rules.map((r) => [
      el("td", { title: r.summary }, r.name),
      pill(r.state, "alert-state", r.name),
      el("td", {}, r.severity),
      el("td", { class: "num", "data-testid": "alert-value", "data-key": r.name },
        r.value === null ? "–" : String(r.value)),
      el("td", { class: "num" }, `${r.op} ${r.threshold}`),
      el("td", {}, r.for),
      el("td", { "data-testid": "alert-detail", "data-key": r.name }, r.detail),
    ]), 7, "no rules");
    const firing = alerts.rules.filter((r) => r.state === "firing").map((r) => r.name);
    $("alerts-summary").textContent = firing.length ? `· ${firing.length} firing` : "· none firing";
    $("alerts-summary").setAttribute("data-firing", firing.join(" "));
  }

  function showComponents(c) {
    fillTable("components", c.items.map((i) => [
      el("td", {}, i.kind === "connector" ? `connector at ${i.gateway}` : i.kind),
      el("td", {}, i.name),
      pill(i.status, "component-status", `${i.kind}:${i.name}`),
      el("td", { "data-testid": "component-detail", "data-key": `${i.kind}:${i.name}` }, i.detail),
    ]), 4, "no component reported");
    $("components-summary").textContent = c.down ? `· ${c.down} down` : "· all up";
  }

  // ---- the calls behind a count -------------------------------------------------------------------------------------

  function callsQuery(limit) {
    // roles=mesh: each call once, at the consumer's home gateway, as the counts count them
    const q = new URLSearchParams({ from: filter.from, to: filter.to, roles: "mesh" });
    for (const k of ["outcome", "client", "service"]) if (filter[k]) q.set(k, filter[k]);
    if (limit) q.set("limit", String(limit));
    return q;
  }

  async function openCalls(wanted) {
    filter = { ...wanted, from: windowStart(state.window), to: new Date(Date.now() + 60e3).toISOString() };
    const words = ["outcome", "client", "service"].filter((k) => filter[k]).map((k) => `${k} ${filter[k]}`);
    $("calls-filter").textContent = `· ${words.join(", ") || "all"} · ${state.window === "hour" ? "last hour" : "last 30 days"}`;
    $("calls-panel").hidden = false;
    $("audit-panel").hidden = true;
    document.body.setAttribute("data-calls", "loading");
    try {
      const page = await api(`calls?${callsQuery(CALLS_SHOWN)}`);
      fillTable("calls", page.calls.map(callRow), 9, "no call in the transaction log matches");
      $("calls-more").hidden = !page.next_page_token;
      document.body.setAttribute("data-calls", "ready");
    } catch (err) {
      const text = err instanceof NotFound ? "this gateway has no transaction log" : err.message;
      fillTable("calls", [], 9, text);
      document.body.setAttribute("data-calls", "error");
    }
    $("calls-panel").scrollIntoView({ block: "start" });
  }

  function callRow(c) {
    const open = el("button", { type: "button", class: "link", "data-testid": "call-open", "data-key": c.xroad_id },
      c.xroad_id);
    open.addEventListener("click", () => openAudit(c));
    const id = el("td", {});
    id.append(open);
    return [
      el("td", {}, c.time_in.replace("T", " ").replace("Z", "")),
      id,
      el("td", { "data-testid": "call-client", "data-key": c.xroad_id }, c.client || "–"),
      el("td", {}, c.service || "–"),
      el("td", {}, c.endpoint || "–"),
      el("td", { class: "num", "data-testid": "call-status", "data-key": c.xroad_id }, String(c.status)),
      el("td", { "data-testid": "call-outcome", "data-key": c.xroad_id }, c.outcome),
      el("td", { "data-testid": "call-error-type", "data-key": c.xroad_id }, c.error_type || "–"),
      el("td", { class: "num" }, ms(c.duration_ms)),
    ];
  }

  async function openAudit(call) {
    // a call's audit records are kept by the gateway that handled it: this page asks its own gateway
    const from = new Date(Date.parse(call.time_in) - 60e3).toISOString();
    const to = new Date(Date.parse(call.time_out) + 60e3).toISOString();
    const q = new URLSearchParams({ from, to, xroad_id: call.xroad_id, limit: "10" });
    $("audit-panel").hidden = false;
    $("audit-xroad-id").textContent = call.xroad_id;
    document.body.setAttribute("data-audit", "loading");
    const page = await api(`audit?${q}`);
    const records = page.records;
    const here = state.gateway;
    $("audit-note").textContent = records.length ? `${records.length} record(s) at gateway ${here}`
      : `no audit record at gateway ${here}; this call was recorded by gateway ${call.gateway}: open its dashboard`;
    const rows = [];
    records.forEach((rec, i) => {
      for (const [k, v] of Object.entries(rec)) {
        const text = v === null || typeof v !== "object" ? String(v) : JSON.stringify(v);
        rows.push([el("td", {}, records.length > 1 ? `${i + 1}. ${k}` : k),
          el("td", { "data-testid": "audit-field", "data-key": k }, text)]);
      }
    });
    fillTable("audit-record", rows, 2, "no record");
    document.body.setAttribute("data-audit", records.length ? "ready" : "empty");
  }

  // ---- CSV ------------------------------------------------------------------------------------------------------------

  function csvCell(text) {
    // a cell a spreadsheet would run as a formula is quoted as text (CSV injection)
    const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
    return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
  }

  function tableCsv(testid) {
    const table = $(testid);
    const lines = [];
    for (const tr of table.querySelectorAll("tr")) {
      const cells = [...tr.children];
      if (cells.length === 1 && cells[0].classList.contains("empty")) continue;
      lines.push(cells.map((c) => csvCell(c.textContent.trim())).join(","));
    }
    return lines.join("\r\n") + "\r\n";
  }

  function download(name, blob) {
    const a = el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(a.href), 60e3);
    document.body.setAttribute("data-downloaded", name);
  }

  async function callsCsv() {
    // every matching call, from the server (the table shows the first page only)
    const token = sessionStorage.getItem("lienthong-ops-token");
    const r = await fetch(`calls?${callsQuery(1000)}&format=csv`, { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(`calls CSV: ${r.status}`);
    download("lienthong-calls.csv", await r.blob());
  }

  function start() {
    document.addEventListener("click", (e) => {
      const target = e.target instanceof Element ? e.target : null;
      const count = target && target.closest("button.count");
      if (count) {
        const d = count.dataset;
        openCalls({ outcome: d.outcome, client: d.client, service: d.service });
        return;
      }
      const csv = target && target.closest("button[data-csv]");
      if (csv) download(`lienthong-${csv.dataset.csv}.csv`, new Blob([tableCsv(csv.dataset.csv)], { type: "text/csv" }));
    });
    $("csv-calls").addEventListener("click", () => callsCsv().catch((err) => {
      $("calls-more").textContent = err.message;
      $("calls-more").hidden = false;
    }));
    $("calls-close").addEventListener("click", () => { $("calls-panel").hidden = true; });
  }

  window.LT.panels = { fetch: fetchPanels, show: (p) => { showAlerts(p.alerts); showComponents(p.components); } };
  window.LT.fmt = fmt;
  document.addEventListener("DOMContentLoaded", start);
})();
