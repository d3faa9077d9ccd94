// The admin inspector's live console: the overview and the workers page refresh
// themselves without reloading.
//
// A page opts in with <div data-rb-live="overview|workers" data-url="…" data-interval="ms">.
// Every interval this script GETs the JSON at data-url (read-only, the page's own reads)
// and updates the page in place: the overview's figures and its charts (entries added per
// second and each group's lag, drawn with the vendored uPlot), or the workers table (rows
// rendered and escaped by the server). It stops asking while the tab is hidden, asks at
// once when it shows again, and doubles its wait after each failure, up to a minute.
// The charts' history is kept here, in the page: it covers the time since the page opened
// (at most the last HISTORY_S seconds). No framework; nothing loaded from the internet.
"use strict";

(() => {
  const root = document.querySelector("[data-rb-live]");
  if (!root) {
    return;
  }
  const HISTORY_S = 600;
  const MAX_CHARTS = 12;
  const MAX_BACKOFF_MS = 60000;
  const COLORS = ["#417690", "#e07a1f", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const kind = root.dataset.rbLive;
  const url = root.dataset.url;
  const interval = Math.max(500, parseInt(root.dataset.interval, 10) || 3000);
  const status = root.querySelector("[data-rb-status]");
  // For tests and the curious: how many refreshes ran, and the last error.
  const state = (window.rbConsole = { polls: 0, errors: 0, lastError: "", updatedAt: null });
  let timer = null;
  let wait = interval;
  let inFlight = false;

  function say(text, failing) {
    if (status) {
      status.textContent = text;
      root.classList.toggle("rb-live-failing", Boolean(failing));
    }
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = document.hidden ? null : setTimeout(poll, ms);
  }

  async function poll() {
    if (inFlight || document.hidden) {
      return;
    }
    inFlight = true;
    try {
      const response = await fetch(url, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      const type = response.headers.get("Content-Type") || "";
      if (response.redirected || !type.includes("application/json")) {
        throw new Error("signed out? reload the page");
      }
      const data = await response.json();
      if (!response.ok) {
        throw new Error(data.error || `HTTP ${response.status}`);
      }
      (kind === "workers" ? updateWorkers : updateOverview)(data);
      state.polls += 1;
      state.updatedAt = new Date();
      wait = interval;
      say(`Live: updated ${state.updatedAt.toLocaleTimeString()}, every ${interval / 1000} s while this tab is visible.`);
    } catch (error) {
      state.errors += 1;
      state.lastError = String(error.message || error);
      wait = Math.min(wait * 2, MAX_BACKOFF_MS);
      say(`Could not refresh (${state.lastError}); trying again in ${Math.round(wait / 1000)} s.`, true);
    } finally {
      inFlight = false;
      schedule(wait);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
      say("Paused while this tab is hidden.");
    } else {
      poll();
    }
  });

  // --- The workers page -------------------------------------------------------------------

  function updateWorkers(data) {
    // The rows come rendered by the page's own template, every value escaped there.
    root.querySelector("[data-rb-rows]").innerHTML = data.html;
    const count = root.querySelector("[data-rb-count]");
    if (count) {
      count.textContent = String(data.count);
    }
  }

  // --- The overview -----------------------------------------------------------------------

  const history = new Map(); // stream -> [{t, added, length, lag: {group: lag}}]
  const charts = new Map(); // stream -> {card, rate, lag, groups}

  function setText(scope, selector, value) {
    const node = scope.querySelector(selector);
    if (node && value !== undefined && value !== null) {
      node.textContent = String(value);
    }
  }

  function entryCell(cell, time, age, id) {
    cell.replaceChildren();
    if (!id) {
      const empty = document.createElement("span");
      empty.className = "rb-quiet";
      empty.textContent = "empty";
      cell.append(empty);
      return;
    }
    const when = document.createElement("span");
    when.className = "rb-time";
    when.textContent = time;
    const ago = document.createElement("span");
    ago.className = "rb-quiet";
    ago.textContent = ` (${age} ago)`;
    const ident = document.createElement("div");
    ident.className = "rb-id rb-quiet";
    ident.textContent = id;
    cell.append(when, " ", ago, ident);
  }

  function updateOverview(data) {
    for (const [field, value] of Object.entries(data.server || {})) {
      setText(root, `[data-rb-server="${field}"]`, value);
    }
    setText(root, "[data-rb-outbox] strong", data.outbox);
    const seen = new Set();
    let unknown = 0;
    for (const s of data.streams) {
      seen.add(s.name);
      const row = root.querySelector(`tr[data-rb-stream="${CSS.escape(s.name)}"]`);
      if (!row) {
        unknown += 1;
      } else {
        row.classList.remove("rb-gone");
        setText(row, '[data-rb-field="length"]', s.length);
        setText(row, '[data-rb-field="groups"]', s.groups);
        setText(row, '[data-rb-field="dead_letters"]', s.dead_letters);
        entryCell(row.querySelector('[data-rb-entry="first"]'), s.first_time, s.first_age, s.first_id);
        entryCell(row.querySelector('[data-rb-entry="last"]'), s.last_time, s.last_age, s.last_id);
      }
      record(s, data.at / 1000);
    }
    for (const row of root.querySelectorAll("tr[data-rb-stream]")) {
      row.classList.toggle("rb-gone", !seen.has(row.dataset.rbStream));
    }
    const notice = root.querySelector("[data-rb-new-streams]");
    if (notice) {
      notice.hidden = unknown === 0;
    }
    for (const name of history.keys()) {
      if (!seen.has(name)) {
        history.delete(name);
      }
    }
    draw(data.streams.filter((s) => !s.dead_letter_of).slice(0, MAX_CHARTS));
  }

  function record(s, t) {
    const samples = history.get(s.name) || [];
    const lag = {};
    for (const g of s.lag) {
      lag[g.group] = g.lag;
    }
    samples.push({ t, added: s.added, length: s.length, lag });
    while (samples.length && samples[0].t < t - HISTORY_S) {
      samples.shift();
    }
    history.set(s.name, samples);
  }

  // Entries added per second between consecutive samples: from entries-added (Redis 7),
  // else from the length (which trimming lowers: a negative change counts as none).
  function rates(samples) {
    const xs = [];
    const ys = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1];
      const b = samples[i];
      const dt = b.t - a.t;
      if (dt <= 0) {
        continue;
      }
      const delta = a.added !== null && b.added !== null ? b.added - a.added : b.length - a.length;
      xs.push(b.t);
      ys.push(Math.max(0, delta) / dt);
    }
    return [xs, ys];
  }

  // Canvas strokes cannot read CSS variables: take the admin theme's colour once.
  const quiet = getComputedStyle(document.body).getPropertyValue("--body-quiet-color").trim() || "#666";

  function chartOptions(title, series, width) {
    return {
      title,
      width,
      height: 120,
      legend: { show: series.length > 1 },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { stroke: quiet, grid: { show: false }, size: 28 },
        { stroke: quiet, size: 44, grid: { stroke: "rgba(128,128,128,0.15)" } },
      ],
      series: [{}, ...series.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: false } }))],
    };
  }

  function draw(streams) {
    const box = root.querySelector("[data-rb-charts]");
    if (!box || typeof window.uPlot !== "function") {
      return;
    }
    const wanted = new Set(streams.map((s) => s.name));
    for (const [name, chart] of charts) {
      if (!wanted.has(name)) {
        chart.rate.destroy();
        chart.lag.destroy();
        chart.card.remove();
        charts.delete(name);
      }
    }
    for (const s of streams) {
      const samples = history.get(s.name) || [];
      const groups = s.lag.map((g) => g.group);
      let chart = charts.get(s.name);
      if (chart && chart.groups.join("\n") !== groups.join("\n")) {
        chart.lag.destroy();
        chart.lag = null;
      }
      if (!chart) {
        const card = document.createElement("figure");
        card.className = "rb-chart";
        card.dataset.rbChart = s.name;
        const caption = document.createElement("figcaption");
        const title = document.createElement("strong");
        title.textContent = s.name;
        const now = document.createElement("span");
        now.className = "rb-quiet";
        now.dataset.rbRate = "";
        caption.append(title, " ", now);
        card.append(caption);
        box.append(card);
        chart = { card, rate: null, lag: null, groups };
        chart.rate = new window.uPlot(chartOptions("added / s", ["added/s"], 300), [[], []], card);
        charts.set(s.name, chart);
      }
      if (!chart.lag) {
        const series = groups.length ? groups : ["(no group)"];
        chart.lag = new window.uPlot(chartOptions("group lag", series, 300), [[], ...series.map(() => [])], chart.card);
        chart.groups = groups;
      }
      const [xs, ys] = rates(samples);
      chart.rate.setData([xs, ys]);
      const latest = ys.length ? ys[ys.length - 1] : null;
      chart.card.querySelector("[data-rb-rate]").textContent =
        latest === null ? "(rate after the next sample)" : `${latest.toFixed(1)} entries/s, lag ${lagText(s)}`;
      const times = samples.map((p) => p.t);
      const lagSeries = groups.length ? groups.map((g) => samples.map((p) => (p.lag[g] === undefined ? null : p.lag[g]))) : [samples.map(() => null)];
      chart.lag.setData([times, ...lagSeries]);
    }
  }

  function lagText(s) {
    if (!s.lag.length) {
      return "– (no group)";
    }
    return s.lag.map((g) => `${g.group} ${g.lag === null ? "?" : g.lag}`).join(", ");
  }

  poll();
})();
