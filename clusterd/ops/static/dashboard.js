// clusterd live dashboard: one EventSource, two uPlot charts, tables redrawn from each tick.
// Server data is only ever put into the page with textContent (method names come from clients).
"use strict";
(function () {
  const HISTORY = 900;            // points kept: 15 minutes at one per second
  const EVENTS = 200;
  const $ = (id) => document.getElementById(id);
  const data = [[], [], [], [], []];   // t, calls/s, errors/s, p50 ms, p99 ms

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? n.toFixed(1) + " " + units[i] : n + " B";
  }
  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.floor(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  }
  function clock(at) {
    return new Date(at * 1000).toLocaleTimeString([], {hour12: false});
  }
  function lastExit(x) {
    if (!x) return "-";
    const how = x.signal ? "signal " + x.signal : "code " + x.code;
    return x.reason + " (" + how + ")" + (x.at ? " " + duration(Date.now() / 1000 - x.at) + " ago" : "");
  }

  // ------------------------------------------------------------------ charts
  function chartWidth(node) { return Math.max(300, node.clientWidth || 600); }
  function makeChart(node, series, yScale) {
    const opts = {
      width: chartWidth(node), height: 220, series: [{}].concat(series),
      // at least two minutes wide: a page opened on a young instance shows a line, not one dot a year wide
      scales: {x: {time: true, range: (u, min, max) => max == null
        ? [Date.now() / 1000 - 120, Date.now() / 1000] : [Math.min(min ?? max, max - 120), max]}, y: yScale},
      legend: {live: true},
      axes: [{}, {size: 60}],
    };
    return new uPlot(opts, data.slice(0, 1).concat(series.map((s) => data[s.idx])), node);
  }
  const charts = [];
  function setupCharts() {
    if (typeof uPlot === "undefined") return;
    charts.push(makeChart($("chart-calls"), [
      {idx: 1, label: "calls/s", stroke: "#2b6cb0", width: 1.5, fill: "rgba(43,108,176,0.08)"},
      {idx: 2, label: "errors/s", stroke: "#c53030", width: 1.5},
    ], {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}));
    charts.push(makeChart($("chart-latency"), [
      {idx: 3, label: "p50 ms", stroke: "#1f8f4e", width: 1.5},
      {idx: 4, label: "p99 ms", stroke: "#b7791f", width: 1.5},
    ], {distr: 3}));
    window.addEventListener("resize", () => {
      for (const c of charts) c.setSize({width: chartWidth(c.root.parentNode), height: 220});
    });
  }
  function redrawCharts() {
    if (charts.length < 2) return;
    charts[0].setData([data[0], data[1], data[2]]);
    charts[1].setData([data[0], data[3], data[4]]);
  }
  function addPoint(p) {
    for (let i = 0; i < 5; i++) {
      data[i].push(p[i]);
      if (data[i].length > HISTORY) data[i].shift();
    }
  }

  // ------------------------------------------------------------------ tables
  function renderStatus(s) {
    if (!s) return;
    $("name").textContent = s.name || "clusterd";
    $("state").textContent = s.state || "-";
    $("state").className = "state " + (s.state || "");
    $("generation").textContent = s.generation ?? "-";
    $("queued").textContent = s.queued ?? "-";
    const m = s.master || {};
    $("master").textContent = "pid " + m.pid + ", up " + duration(m.uptime_s) + ", " + bytes(m.rss_bytes);
    $("version").textContent = m.version || "-";
    const workers = s.workers || [];
    $("ready").textContent = workers.filter((w) => w.state === "ready").length + " / " + workers.length;
    const body = el("tbody");
    for (const w of workers) {
      const tr = el("tr");
      tr.dataset.slot = w.slot;
      tr.dataset.pid = w.pid === null ? "" : w.pid;
      tr.dataset.state = w.state;
      const cells = [w.slot, w.pid ?? "-", null, w.generation, duration(w.uptime_s), w.restarts, bytes(w.rss_bytes),
        w.cpu_percent === null || w.cpu_percent === undefined ? "-" : Math.round(w.cpu_percent) + "%",
        w.inflight, w.served, w.failed, lastExit(w.last_exit)];
      cells.forEach((c, i) => {
        if (i === 2) {
          const td = el("td");
          td.appendChild(el("span", w.state, "state " + w.state));
          tr.appendChild(td);
        } else {
          tr.appendChild(el("td", c, i >= 4 && i <= 10 ? "num" : ""));
        }
      });
      body.appendChild(tr);
    }
    $("workers").replaceChild(body, $("workers").tBodies[0]);
    const methods = s.methods || {};
    const mbody = el("tbody");
    const names = Object.keys(methods).sort();
    for (const name of names) {
      const r = methods[name];
      const tr = el("tr");
      tr.dataset.method = name;
      for (const [v, cls] of [[name, ""], [r.calls, "num"], [r.errors, "num"], [r.p50_ms ?? "-", "num"],
        [r.p99_ms ?? "-", "num"]]) tr.appendChild(el("td", v, cls));
      mbody.appendChild(tr);
    }
    if (!names.length) {
      const tr = el("tr");
      const td = el("td", "no calls in the last minute", "empty");
      td.colSpan = 5;
      tr.appendChild(td);
      mbody.appendChild(tr);
    }
    $("methods").replaceChild(mbody, $("methods").tBodies[0]);
  }

  const BAD = new Set(["worker-exit", "worker-hung", "worker-kill", "reload-failed", "call-timeout", "boot-failed",
    "agent-lost"]);
  const GOOD = new Set(["worker-ready", "reload-done", "master-ready", "agent-join"]);
  function addEvent(e) {
    const list = $("events");
    const li = el("li");
    li.dataset.kind = e.kind;
    if (e.pid !== undefined) li.dataset.pid = e.pid;
    if (e.slot !== undefined) li.dataset.slot = e.slot;
    const quiet = e.kind === "worker-exit" && ["reload", "scale", "stop"].includes(e.reason);
    li.className = BAD.has(e.kind) && !quiet ? "bad" : GOOD.has(e.kind) ? "good" : "warn";
    li.appendChild(el("time", clock(e.at)));
    li.appendChild(el("span", e.kind, "kind"));
    li.appendChild(el("span", e.msg));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > EVENTS) list.removeChild(list.lastChild);
  }

  // ------------------------------------------------------------------ live updates
  // Relative URLs: the page is /dashboard on the metrics port and on the HTTP port (and under a proxy's prefix).
  function connect() {
    const source = new EventSource("dashboard/events");
    source.addEventListener("hello", (m) => {
      const d = JSON.parse(m.data);
      for (const a of data) a.length = 0;
      for (const p of d.history || []) addPoint(p);
      $("events").textContent = "";
      for (const e of d.events || []) addEvent(e);
      renderStatus(d.status);
      redrawCharts();
    });
    source.addEventListener("tick", (m) => {
      const d = JSON.parse(m.data);
      addPoint(d.point);
      renderStatus(d.status);
      redrawCharts();
    });
    source.addEventListener("event", (m) => addEvent(JSON.parse(m.data)));
    source.onopen = () => { $("link").textContent = "live"; $("link").className = "link up"; };
    source.onerror = () => {
      $("link").textContent = "reconnecting"; $("link").className = "link down";
      // A refused stream (503: too many open) is not retried by the browser itself: try again later.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    };
  }

  setupCharts();
  connect();
})();
