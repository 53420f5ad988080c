// Reference client: lists matches, follows one match's metrics over Server-Sent Events.
// Writes only textContent and SVG attributes (the page's CSP allows no inline code).
"use strict";

const GOAL_TYPES = ["goal", "own_goal", "penalty_goal"];
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 800, height: 200, left: 44, right: 10, top: 10, bottom: 36 };
let source = null;
let selected = null;
let latest = null; // the last metrics of the selected match
let clockOffsetMs = 0; // server time minus this browser's time, from generatedAt

function el(id) { return document.getElementById(id); }

function text(node, value) { node.textContent = value === null || value === undefined ? "-" : String(value); }

function localTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "-";
}

function localDateTime(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "medium" }) : "-";
}

function plural(count, noun) { return `${count} ${noun}${count === 1 ? "" : "s"}`; }

function minuteLabel(entry) {
  return entry.matchMinute === null ? `${localTime(entry.minute)} (pre-match)` : `${entry.matchMinute}'`;
}

function scoreline(score) {
  const teams = Object.keys(score);
  if (teams.length === 0) return "-";
  if (teams.length === 1) return `${teams[0]} ${score[teams[0]]}`;
  const [home, away] = teams;
  return `${home} ${score[home]} – ${score[away]} ${away}`;
}

function matchClock(metrics) {
  if (metrics.status === "ended") return "FT";
  if (!metrics.kickoffAt) return "not started";
  const elapsed = Date.now() + clockOffsetMs - Date.parse(metrics.kickoffAt);
  return elapsed < 0 ? "not started" : `${Math.floor(elapsed / 60000) + 1}'`;
}

function describeMatch(match) {
  return `${match.status} · ${plural(match.totalEvents, "event")} · ${match.teams.join(" vs ")}`;
}

async function refreshMatches() {
  try {
    const response = await fetch("/api/matches?limit=50");
    if (!response.ok) return;
    const body = await response.json();
    const list = el("match-list");
    list.replaceChildren();
    if (body.items.length === 0) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "No matches yet: run the simulator.";
      list.append(empty);
    }
    for (const match of body.items) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.dataset.matchId = match.matchId;
      button.className = match.matchId === selected ? "selected" : "";
      button.textContent = match.matchId;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = describeMatch(match);
      button.append(meta);
      button.addEventListener("click", () => follow(match.matchId, true));
      item.append(button);
      list.append(item);
    }
    if (selected === null && body.items.length > 0) follow(body.items[0].matchId, false);
    syncSidebar();
  } catch (error) {
    console.warn("could not list matches", error);
  }
}

// The sidebar entry of the followed match shows the figures of the main pane, not the list's older ones.
function syncSidebar() {
  if (latest === null) return;
  for (const button of document.querySelectorAll("#match-list button")) {
    if (button.dataset.matchId !== latest.matchId) continue;
    const meta = button.querySelector(".meta");
    if (meta) {
      meta.textContent = describeMatch({
        status: latest.status, totalEvents: latest.totalEvents, teams: Object.keys(latest.eventsByTeam).sort(),
      });
    }
  }
}

function follow(matchId, fromClick) {
  if (source !== null) source.close();
  selected = matchId;
  latest = null;
  if (fromClick) {
    const url = new URL(window.location.href);
    url.searchParams.set("match", matchId);
    window.history.pushState({ match: matchId }, "", url);
  }
  for (const button of document.querySelectorAll("#match-list button")) {
    button.classList.toggle("selected", button.dataset.matchId === matchId);
  }
  el("match").hidden = false;
  text(el("match-title"), matchId);
  document.title = `${matchId} · Fanfinity`;
  text(el("connection"), "connecting");
  source = new EventSource(`/api/matches/${encodeURIComponent(matchId)}/metrics/stream`);
  source.addEventListener("metrics", (event) => {
    text(el("connection"), `live · update ${event.lastEventId}`);
    render(JSON.parse(event.data));
  });
  source.addEventListener("end", () => {
    text(el("connection"), "full time");
    source.close();
  });
  source.onerror = () => text(el("connection"), "reconnecting");
}

function fillTable(table, counts) {
  const body = table.tBodies[0];
  body.replaceChildren();
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const top = entries.length ? entries[0][1] : 1;
  for (const [name, count] of entries) {
    const row = body.insertRow();
    row.dataset.name = name;
    row.insertCell().textContent = name;
    const barCell = row.insertCell();
    barCell.className = "bar-cell";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(4, (100 * count) / top)}%`;
    barCell.append(bar);
    const countCell = row.insertCell();
    countCell.className = "count";
    countCell.textContent = String(count);
  }
}

function svg(name, attributes, content) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (content !== undefined) node.textContent = content;
  return node;
}

// Bars per wall-clock minute, labelled on the x axis by match minute (or local time before kick-off).
function drawTimeline(series, peaks) {
  const chart = el("timeline");
  chart.replaceChildren();
  if (series.length === 0) return;
  const first = Date.parse(series[0].minute);
  const last = Date.parse(series[series.length - 1].minute);
  const minutes = Math.max(1, Math.round((last - first) / 60000) + 1);
  const top = Math.max(...series.map((point) => point.events));
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const baseline = CHART.top + plotHeight;
  const step = plotWidth / minutes;
  const peakMinutes = new Set(peaks.map((peak) => peak.minute));
  chart.append(svg("line", { x1: CHART.left, y1: baseline, x2: CHART.width - CHART.right, y2: baseline, class: "axis" }));
  chart.append(svg("line", { x1: CHART.left, y1: CHART.top, x2: CHART.left, y2: baseline, class: "axis" }));
  for (const value of [0, Math.ceil(top / 2), top]) {
    const y = baseline - (plotHeight * value) / top;
    chart.append(svg("text", { x: CHART.left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, String(value)));
  }
  const labelEvery = [1, 2, 5, 10, 15, 30, 60, 120].find((every) => minutes / every <= 10) || 240;
  const anchor = series.find((point) => point.matchMinute !== null);
  const anchorIndex = anchor ? Math.round((Date.parse(anchor.minute) - first) / 60000) : 0;
  for (let index = 0; index < minutes; index += 1) {
    const matchMinute = anchor ? anchor.matchMinute + index - anchorIndex : null;
    const onGrid = matchMinute !== null && matchMinute >= 1 ? matchMinute % labelEvery === 0 || matchMinute === 1 : index % labelEvery === 0;
    if (!onGrid) continue;
    const label = matchMinute !== null && matchMinute >= 1 ? `${matchMinute}'` : localTime(new Date(first + index * 60000).toISOString());
    chart.append(svg("text", { x: CHART.left + (index + 0.5) * step, y: baseline + 14, class: "tick", "text-anchor": "middle" }, label));
  }
  for (const point of series) {
    const index = Math.round((Date.parse(point.minute) - first) / 60000);
    const height = (plotHeight * point.events) / top;
    const x = CHART.left + index * step;
    const rect = svg("rect", {
      x: x + 0.5, y: baseline - height, width: Math.max(1, step - 1), height,
      class: peakMinutes.has(point.minute) ? "peak" : "",
    });
    rect.append(svg("title", {}, `${minuteLabel(point)} · ${localTime(point.minute)}: ${plural(point.events, "event")}`));
    chart.append(rect);
  }
  const kickedOff = series.some((point) => point.matchMinute !== null);
  chart.append(svg("text", { x: CHART.left + plotWidth / 2, y: CHART.height - 4, class: "axis-label", "text-anchor": "middle" },
    kickedOff ? "match minute" : "local time (no kick-off yet)"));
  chart.append(svg("text", { x: 12, y: CHART.top + plotHeight / 2, class: "axis-label", "text-anchor": "middle",
    transform: `rotate(-90 12 ${CHART.top + plotHeight / 2})` }, "events"));
}

function render(metrics) {
  latest = metrics;
  clockOffsetMs = Date.parse(metrics.generatedAt) - Date.now();
  text(el("total-events"), metrics.totalEvents);
  const goals = GOAL_TYPES.reduce((sum, type) => sum + (metrics.eventsByType[type] || 0), 0);
  text(el("goals"), goals);
  text(el("scoreline"), scoreline(metrics.score));
  text(el("clock"), matchClock(metrics));
  text(el("kickoff"), metrics.kickoffAt ? `kick-off ${localTime(metrics.kickoffAt)}` : "");
  const status = el("status");
  status.textContent = metrics.status;
  status.className = `badge ${metrics.status}`;
  text(el("p50"), metrics.responseTimeMs.p50);
  text(el("p95"), metrics.responseTimeMs.p95);
  text(el("p99"), metrics.responseTimeMs.p99);
  text(el("lag-p99"), metrics.processingLagMs.p99);
  fillTable(el("by-type"), metrics.eventsByType);
  fillTable(el("by-team"), metrics.eventsByTeam);
  const peaks = el("peaks");
  peaks.replaceChildren();
  for (const peak of metrics.peakEngagementPeriods) {
    const item = document.createElement("li");
    item.textContent = `${minuteLabel(peak)} · ${plural(peak.events, "event")}`;
    peaks.append(item);
  }
  const window_ = metrics.busiestWindow;
  let windowText = "";
  if (window_) {
    const span = window_.matchMinute === null
      ? `${localTime(window_.start)}–${localTime(window_.end)}`
      : `${window_.matchMinute}'–${window_.lastMatchMinute}'`;
    windowText = `Busiest 5 minutes: ${span}, ${plural(window_.events, "event")}`;
  }
  text(el("window"), windowText);
  const overflow = el("overflow");
  overflow.hidden = metrics.overflow.teams === 0 && metrics.overflow.minutes === 0;
  text(overflow, `Beyond this match's bounds: ${plural(metrics.overflow.teams, "event")} of further teams, `
    + `${plural(metrics.overflow.minutes, "event")} of further minutes (counted in the totals).`);
  drawTimeline(metrics.eventsPerMinute, metrics.peakEngagementPeriods);
  text(el("as-of"), localDateTime(metrics.asOf));
  syncSidebar();
}

function tickClock() {
  if (latest !== null) text(el("clock"), matchClock(latest));
}

function fromLocation() {
  const wanted = new URLSearchParams(window.location.search).get("match");
  if (wanted && wanted !== selected) follow(wanted, false);
}

window.addEventListener("popstate", fromLocation);
fromLocation();
refreshMatches();
setInterval(refreshMatches, 5000);
setInterval(tickClock, 1000);
