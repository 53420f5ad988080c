// Reference client: lists matches, follows one match's metrics over Server-Sent Events.
"use strict";

const GOAL_TYPES = ["goal", "own_goal", "penalty_goal"];
let source = null;
let selected = null;

function el(id) { return document.getElementById(id); }

function text(node, value) { node.textContent = value === null || value === undefined ? "-" : String(value); }

function formatMinute(iso) { return iso.slice(11, 16); }

function plural(count, noun) { return `${count} ${noun}${count === 1 ? "" : "s"}`; }

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
      meta.textContent = `${match.status} · ${plural(match.totalEvents, "event")} · ${match.teams.join(" vs ")}`;
      button.append(meta);
      button.addEventListener("click", () => follow(match.matchId));
      item.append(button);
      list.append(item);
    }
    if (selected === null && body.items.length > 0) follow(body.items[0].matchId);
  } catch (error) {
    console.warn("could not list matches", error);
  }
}

function follow(matchId) {
  if (source !== null) source.close();
  selected = matchId;
  for (const button of document.querySelectorAll("#match-list button")) {
    button.classList.toggle("selected", button.dataset.matchId === matchId);
  }
  el("match").hidden = false;
  text(el("match-title"), matchId);
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
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
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

function drawTimeline(series, peaks) {
  const svg = el("timeline");
  svg.replaceChildren();
  if (series.length === 0) return;
  const first = Date.parse(series[0].minute);
  const last = Date.parse(series[series.length - 1].minute);
  const minutes = Math.max(1, Math.round((last - first) / 60000) + 1);
  const top = Math.max(...series.map((point) => point.events));
  const width = 800 / minutes;
  const peakMinutes = new Set(peaks.map((peak) => peak.minute));
  for (const point of series) {
    const index = Math.round((Date.parse(point.minute) - first) / 60000);
    const height = (150 * point.events) / top;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", String(index * width));
    rect.setAttribute("y", String(160 - height));
    rect.setAttribute("width", String(Math.max(1, width - 1)));
    rect.setAttribute("height", String(height));
    if (peakMinutes.has(point.minute)) rect.setAttribute("class", "peak");
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${formatMinute(point.minute)} UTC: ${point.events} events`;
    rect.append(title);
    svg.append(rect);
  }
}

function render(metrics) {
  text(el("total-events"), metrics.totalEvents);
  const goals = GOAL_TYPES.reduce((sum, type) => sum + (metrics.eventsByType[type] || 0), 0);
  text(el("goals"), goals);
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
    item.textContent = `${formatMinute(peak.minute)} UTC · ${plural(peak.events, "event")}`;
    peaks.append(item);
  }
  const window = metrics.busiestWindow;
  text(el("window"), window ? `Busiest 5 minutes: ${formatMinute(window.start)}–${formatMinute(window.end)} UTC, ${plural(window.events, "event")}` : "");
  drawTimeline(metrics.eventsPerMinute, metrics.peakEngagementPeriods);
  text(el("as-of"), metrics.asOf);
}

refreshMatches();
setInterval(refreshMatches, 5000);
