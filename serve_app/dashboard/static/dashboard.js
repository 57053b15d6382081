// Weather pipeline dashboard: renders the JSON snapshot of serve_app/dashboard.py.
// Live updates come from the server-sent events at api/events; if none arrives for a
// while (proxy buffering, stream closed) the page fetches api/snapshot instead.
// Every URL is relative so the page works under any prefix (/dashboard/ in Serve).
"use strict";

const STALE_AFTER_MS = 2500;
const WEATHER_COLORS = { Lluvioso: "#2563eb", Nubloso: "#6b7280", Soleado: "#f59e0b" };
const STORE_COLORS = { redis: "#dc2626", valkey: "#0d9488" };
const STORE_TITLES = { redis: "Redis", valkey: "Valkey" };
const TOP_COUNTRIES_CHARTED = 15;
const PLOT_CONFIG = { responsive: true, displayModeBar: false };

let lastUpdate = 0;
let transport = "connecting";

// --- small helpers -------------------------------------------------------------------

function byTestId(id) {
  return document.querySelector(`[data-testid="${CSS.escape(id)}"]`);
}

function setNumber(el, value, format = (n) => n.toLocaleString("en-US")) {
  if (!el) return;
  if (value === null || value === undefined) {
    el.textContent = "—";
    el.removeAttribute("data-value");
  } else {
    el.textContent = format(value);
    el.dataset.value = String(value);
  }
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function formatSeconds(s) {
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`;
}

function setHealth(el, health) {
  if (!el) return;
  el.textContent = health.ok ? "ok" : "down";
  el.className = `badge ${health.ok ? "ok" : "bad"}`;
  el.title = health.detail;
  el.dataset.ok = String(health.ok);
}

function cell(tag, text, attrs = {}) {
  const el = document.createElement(tag);
  el.textContent = text;
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  return el;
}

function lastKnown(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
  return null;
}

function weathersOf(snapshot, stats) {
  const seen = new Set(snapshot.weathers);
  for (const w of Object.keys(stats.by_weather)) seen.add(w);
  return [...seen];
}

function countriesByCount(stats) {
  return Object.keys(stats.by_country).sort(
    (a, b) => stats.by_country[b] - stats.by_country[a] || a.localeCompare(b));
}

// --- stores ----------------------------------------------------------------------------

function storeCard(name) {
  let card = document.querySelector(`.store[data-store="${name}"]`);
  if (card) return card;
  card = document.getElementById("store-template").content.firstElementChild.cloneNode(true);
  card.dataset.store = name;
  card.dataset.testid = `${name}-card`;
  const ids = { health: "health", total: "total", memory: "memory", ops: "ops", heatmap: "heatmap",
                latest: "latest", chart: "chart", error: "error" };
  for (const [part, suffix] of Object.entries(ids)) {
    card.querySelector(`[data-part="${part}"]`).dataset.testid = `${name}-${suffix}`;
  }
  card.querySelector('[data-part="title"]').textContent = STORE_TITLES[name] || name;
  document.getElementById("stores").appendChild(card);
  return card;
}

function renderHeatmap(table, name, stats, weathers) {
  const countries = countriesByCount(stats);
  const max = Math.max(1, ...Object.values(stats.by_country_weather));
  const head = document.createElement("thead");
  const headRow = head.insertRow();
  headRow.append(cell("th", "country"), ...weathers.map((w) => cell("th", w, { class: "num" })),
                 cell("th", "total", { class: "num" }));
  const body = document.createElement("tbody");
  for (const country of countries) {
    const row = body.insertRow();
    row.append(cell("th", country));
    for (const weather of weathers) {
      const n = stats.by_country_weather[`${country}:${weather}`] || 0;
      const td = cell("td", n.toLocaleString("en-US"), {
        class: "cell", "data-testid": `${name}-cw-${country}-${weather}`, "data-value": String(n) });
      td.style.setProperty("--heat-alpha", (0.08 + 0.6 * (n / max)).toFixed(3));
      if (!n) td.style.setProperty("--heat-alpha", "0");
      row.append(td);
    }
    const total = stats.by_country[country];
    row.append(cell("td", total.toLocaleString("en-US"), {
      class: "num", "data-testid": `${name}-country-${country}`, "data-value": String(total) }));
  }
  const foot = document.createElement("tfoot");
  const footRow = foot.insertRow();
  footRow.append(cell("th", "total"));
  for (const weather of weathers) {
    const n = stats.by_weather[weather] || 0;
    footRow.append(cell("td", n.toLocaleString("en-US"), {
      class: "num", "data-testid": `${name}-weather-${weather}`, "data-value": String(n) }));
  }
  footRow.append(cell("td", (stats.total ?? 0).toLocaleString("en-US"), { class: "num" }));
  table.replaceChildren(head, body, foot);
}

function renderLatest(list, tweets) {
  list.replaceChildren(...tweets.map((tweet, i) => {
    const li = document.createElement("li");
    li.dataset.testid = `latest-${i}`;
    const when = tweet.accepted_at ? new Date(tweet.accepted_at).toLocaleTimeString() : "";
    li.append(cell("span", `${when} · ${tweet.country} · ${tweet.weather}`, { class: "meta" }),
              cell("span", tweet.description, { class: "text" }));
    return li;
  }));
}

function renderCountryChart(el, stats, weathers) {
  if (!window.Plotly) return;
  const countries = countriesByCount(stats).slice(0, TOP_COUNTRIES_CHARTED);
  const traces = weathers.map((weather) => ({
    type: "bar", name: weather, x: countries,
    y: countries.map((c) => stats.by_country_weather[`${c}:${weather}`] || 0),
    marker: { color: WEATHER_COLORS[weather] },
  }));
  Plotly.react(el, traces, {
    barmode: "stack", margin: { l: 45, r: 10, t: 10, b: 35 },
    legend: { orientation: "h", y: 1.12 }, font: { size: 11 },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  }, PLOT_CONFIG);
}

function renderStore(snapshot, name, stats) {
  const card = storeCard(name);
  card.querySelector('[data-part="via"]').textContent = stats.via;
  setHealth(card.querySelector('[data-part="health"]'), stats.health);
  const error = card.querySelector('[data-part="error"]');
  error.hidden = !stats.error;
  error.textContent = stats.error ? `store read failed: ${stats.error}` : "";
  setNumber(card.querySelector('[data-part="total"]'), stats.total);
  setNumber(card.querySelector('[data-part="memory"]'), stats.used_memory, formatBytes);
  setNumber(card.querySelector('[data-part="ops"]'), stats.ops_per_sec);
  const weathers = weathersOf(snapshot, stats);
  renderHeatmap(card.querySelector('[data-part="heatmap"]'), name, stats, weathers);
  renderLatest(card.querySelector('[data-part="latest"]'), stats.latest);
  renderCountryChart(card.querySelector('[data-part="chart"]'), stats, weathers);
}

// --- flow, backlog, health, replicas ----------------------------------------------------

function renderSeries(elId, nowId, history, key, unit, format) {
  const times = history.at.map((t) => new Date(t * 1000));
  const now = document.getElementById(nowId);
  now.replaceChildren(...Object.keys(history[key]).map((name) => {
    const value = lastKnown(history[key][name]);
    const span = cell("span", `${STORE_TITLES[name] || name}: ${value === null ? "—" : format(value)}`,
                      { "data-testid": `${name}-${key}` });
    if (value !== null) span.dataset.value = String(value);
    return span;
  }));
  if (!window.Plotly) return;
  const traces = Object.entries(history[key]).map(([name, values]) => ({
    type: "scatter", mode: key === "freshness" ? "lines+markers" : "lines",
    name: STORE_TITLES[name] || name, x: times, y: values, connectgaps: key === "freshness",
    line: { color: STORE_COLORS[name], width: 2 }, marker: { size: 4 },
  }));
  Plotly.react(document.getElementById(elId), traces, {
    margin: { l: 45, r: 10, t: 10, b: 35 }, legend: { orientation: "h", y: 1.15 },
    yaxis: { title: { text: unit }, rangemode: "tozero" }, font: { size: 11 },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  }, PLOT_CONFIG);
}

function renderBrokers(brokers) {
  setNumber(document.getElementById("kafka-lag"), brokers.kafka.lag);
  setNumber(document.getElementById("rabbitmq-depth"), brokers.rabbitmq.depth);
  setNumber(document.getElementById("kafka-dead-letters"), brokers.kafka.dead_letters);
  setNumber(document.getElementById("rabbitmq-dead-letters"), brokers.rabbitmq.dead_letters);
}

function renderHealth(health) {
  document.getElementById("health-rows").replaceChildren(...Object.entries(health).map(([name, h]) => {
    const row = document.createElement("tr");
    const badge = cell("span", "", { "data-testid": `health-${name}` });
    setHealth(badge, h);
    const state = document.createElement("td");
    state.append(badge);
    row.append(cell("th", name), state, cell("td", h.detail, { class: "detail" }));
    return row;
  }));
}

function renderReplicas(replicas) {
  const error = document.getElementById("replicas-error");
  error.hidden = !replicas.error;
  error.textContent = replicas.error || "";
  const rows = [];
  for (const [app, deployments] of Object.entries(replicas.deployments)) {
    for (const [deployment, n] of Object.entries(deployments)) {
      const row = document.createElement("tr");
      row.append(cell("td", app), cell("td", deployment),
                 cell("td", String(n), { class: "num", "data-testid": `replicas-${app}-${deployment}`,
                                         "data-value": String(n) }));
      rows.push(row);
    }
  }
  document.getElementById("replica-rows").replaceChildren(...rows);
}

// Plotly's `responsive` follows window resizes only; a chart whose card changes width
// (the second store column appearing, a scrollbar) is resized here.
const resizeCharts = window.ResizeObserver
  ? new ResizeObserver((entries) => {
    for (const entry of entries) {
      if (window.Plotly && entry.target.data) Plotly.Plots.resize(entry.target);
    }
  })
  : null;

function observeChart(el) {
  if (resizeCharts && !el.dataset.observed) {
    resizeCharts.observe(el);
    el.dataset.observed = "true";
  }
}

function render(snapshot) {
  if (snapshot.generated_at === null) return;
  // Every column first, so each chart is drawn at its final width.
  for (const name of Object.keys(snapshot.stores)) storeCard(name);
  for (const [name, stats] of Object.entries(snapshot.stores)) renderStore(snapshot, name, stats);
  document.querySelectorAll(".chart").forEach(observeChart);
  renderSeries("chart-rate", "rate-now", snapshot.history, "rate", "tweets/s", (v) => v.toFixed(1));
  renderSeries("chart-freshness", "freshness-now", snapshot.history, "freshness", "s", formatSeconds);
  renderBrokers(snapshot.brokers);
  renderHealth(snapshot.health);
  renderReplicas(snapshot.replicas);
  const stamp = document.getElementById("generated-at");
  stamp.textContent = new Date(snapshot.generated_at * 1000).toLocaleTimeString();
  stamp.dataset.value = String(snapshot.sequence);
  lastUpdate = Date.now();
}

// --- transport -------------------------------------------------------------------------

function showTransport(state) {
  transport = state;
  const el = document.getElementById("connection");
  el.textContent = state;
  el.className = `badge ${state === "offline" ? "bad" : "ok"}`;
}

async function poll() {
  try {
    const response = await fetch("api/snapshot", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    if (transport !== "live") showTransport("polling");
  } catch (err) {
    showTransport("offline");
  }
}

function connect() {
  if (!window.EventSource) return;
  const source = new EventSource("api/events");
  source.onmessage = (event) => {
    render(JSON.parse(event.data));
    showTransport("live");
  };
  source.onerror = () => {
    if (transport === "live") showTransport("reconnecting");
  };
}

function watchdog() {
  if (Date.now() - lastUpdate > STALE_AFTER_MS) poll();
}

window.addEventListener("DOMContentLoaded", () => {
  poll();
  connect();
  setInterval(watchdog, 1000);
});
