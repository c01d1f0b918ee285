// plait's live page: the runs, and one run as a graph, a timeline and its LLM text.
// Plain JS, no build step, no network but this server. Events come from
// GET /v1/runs/{id}/events (read with fetch, so a reconnect sends Last-Event-ID itself);
// drawing is on canvases, redrawn at most once a frame, so 1,000 tasks stay smooth.
"use strict";

const STATUS_COLORS = {
  pending: "#9aa3ad", running: "#2f7de1", done: "#2e9d5b", failed: "#d23b3b",
  cancelled: "#c98a1b", skipped: "#b9bec4", llm: "#7b5cc4",
};
const NODE = { w: 88, h: 22, gx: 34, gy: 8, pad: 12 };
const NODE_FONT = "11px system-ui, sans-serif";
const NODE_ROOM = NODE.w - 8; // a node label's width: 4 px either side
const LANE = 14;
const MAX_CANVAS = 16000;
const $ = (id) => document.getElementById(id);

const plait = (window.plait = {
  run: null, // the open run's state
  streams: 0, // how many times a stream was opened for the open run (reconnects + 1)
  nodeCenter, // (task id) -> {x, y} in page coordinates, for a click
  nodeLabel, // (task id) -> the label its graph node shows
  labelWidth, // (text) -> its width in a node's font, in px
  NODE_ROOM,
});

// ---- HTTP ------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { location.reload(); throw new Error("signed out"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- the runs list and the start form -------------------------------------------------

async function refreshRuns() {
  let runs;
  try { runs = await api("/v1/runs?limit=100"); } catch (e) { return; }
  const list = $("runs");
  const items = runs.map((r) => {
    const li = document.createElement("li");
    li.dataset.runId = r.run_id;
    li.className = plait.run && plait.run.id === r.run_id ? "selected" : "";
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = r.run_id;
    id.title = r.source;
    const badge = document.createElement("span");
    badge.className = `badge ${r.status}`;
    badge.textContent = `${r.status} ${r.tasks_done}/${r.tasks_total}`;
    li.append(id, badge);
    li.addEventListener("click", () => { location.hash = `run=${encodeURIComponent(r.run_id)}`; });
    return li;
  });
  list.replaceChildren(...items);
}

$("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const kind = form.kind.value;
  const body = {};
  body[kind] = form.text.value;
  if (kind === "question" && form.model.value.trim()) body.model = form.model.value.trim();
  if (form.run_id.value.trim()) body.run_id = form.run_id.value.trim();
  $("start-error").textContent = "";
  try {
    const made = await api("/v1/runs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    location.hash = `run=${encodeURIComponent(made.run_id)}`;
    refreshRuns();
  } catch (e) {
    $("start-error").textContent = e.message;
  }
});

$("cancel").addEventListener("click", async () => {
  if (!plait.run) return;
  try { await api(`/v1/runs/${encodeURIComponent(plait.run.id)}/cancel`, { method: "POST" }); }
  catch (e) { note(e.message); }
});

// ---- one run ----------------------------------------------------------------------------

function newRun(id) {
  return {
    id, status: "running", finished: false, lastId: null, answer: null,
    tasks: new Map(), layers: [], calls: new Map(), t0: null, tMax: 0,
    selected: null, abort: null,
  };
}

function openRun(id) {
  if (plait.run && plait.run.abort) plait.run.abort.abort();
  const run = (plait.run = newRun(id));
  plait.streams = 0;
  $("run").hidden = false;
  $("run-title").textContent = id;
  $("answer").hidden = true;
  $("planner").textContent = "";
  $("joiner").textContent = "";
  $("notes").replaceChildren();
  $("detail").textContent = "Click a task in the graph or the timeline.";
  for (const li of $("runs").children) li.classList.toggle("selected", li.dataset.runId === id);
  schedule();
  follow(run);
}

// Read the event stream; on a cut (a server restart), wait and reconnect from the last id.
async function follow(run) {
  while (!run.finished && plait.run === run) {
    run.abort = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (run.lastId !== null) headers["Last-Event-ID"] = run.lastId;
    try {
      const response = await fetch(`/v1/runs/${encodeURIComponent(run.id)}/events`, {
        headers, credentials: "same-origin", signal: run.abort.signal,
      });
      if (response.status === 401) { location.reload(); return; }
      if (response.status === 404) { note("no such run"); return; }
      if (response.status === 400 && run.lastId !== null) { // an id this run's log lacks
        note(`stream: ${(await response.json().catch(() => ({}))).error || "HTTP 400"}; reloaded`);
        if (plait.run === run) openRun(run.id);
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      plait.streams += 1;
      setConn("live");
      await readStream(run, response.body);
    } catch (e) {
      if (plait.run !== run) return;
    }
    if (!run.finished && plait.run === run) {
      setConn("reconnecting…");
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  if (plait.run === run) setConn(run.finished ? "" : "closed");
}

async function readStream(run, body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let id = null, name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") id = text;
        else if (field === "event") name = text;
        else if (field === "data") data += (data ? "\n" : "") + text;
      }
      if (!data || plait.run !== run) continue;
      if (id !== null) run.lastId = id;
      handle(run, name, JSON.parse(data));
      if (run.finished) { reader.cancel(); return; }
    }
  }
}

function handle(run, name, d) {
  if (typeof d.t === "number") {
    if (run.t0 === null || d.t < run.t0) run.t0 = d.t;
    run.tMax = Math.max(run.tMax, d.t);
  }
  switch (name) {
    case "run_started": run.status = "running"; if (d.resumed) note("resumed"); break;
    case "task_added": addTask(run, d.task, d.t); break;
    case "task_started": {
      const t = task(run, d.id); t.status = "running"; t.start = d.t; t.end = null; break;
    }
    case "task_retrying": task(run, d.id).retries = d.attempt; break;
    case "task_finished": {
      const t = task(run, d.id);
      t.status = d.status; t.result = d.result; t.error = d.error; t.end = d.t;
      if (t.start == null) t.start = d.t;
      if (run.selected === d.id) showTask(run, d.id);
      break;
    }
    case "llm_started": run.calls.set(d.call, { role: d.role, start: d.t, end: null, text: "" }); break;
    case "llm_token": {
      const c = run.calls.get(d.call);
      if (c) { c.text += d.text; run.textDirty = true; }
      break;
    }
    case "llm_finished": {
      const c = run.calls.get(d.call) || { role: d.role || "llm", start: d.started ?? d.t, text: "" };
      c.end = d.t; c.error = d.error;
      if (d.text) c.text = d.text;
      run.calls.set(d.call, c);
      run.textDirty = true;
      break;
    }
    case "llm_retrying": note(`model call ${d.call} retried: ${d.error}`); break;
    case "plan_invalid": note(`plan invalid: ${d.error}`); break;
    case "replanning": note(`replanning (round ${d.round}): ${d.reason}`); break;
    case "answered": run.answer = d.answer; break;
    case "run_finished": finish(run, d.result); break;
    default: break;
  }
  schedule();
}

function task(run, id) {
  let t = run.tasks.get(id);
  if (!t) t = addTask(run, { id, tool: "?", args: [], kwargs: {}, deps: [] }, run.tMax);
  return t;
}

function addTask(run, spec, t) {
  const old = run.tasks.get(spec.id);
  if (old) { // added again by a resumed session: it runs again
    Object.assign(old, spec, { status: "pending", start: null, end: null, result: undefined, error: null });
    return old;
  }
  let layer = 0;
  for (const dep of spec.deps) {
    const parent = run.tasks.get(dep);
    if (parent) layer = Math.max(layer, parent.layer + 1);
  }
  while (run.layers.length <= layer) run.layers.push([]);
  const entry = {
    ...spec, status: "pending", layer, row: run.layers[layer].length,
    added: t, start: null, end: null, result: undefined, error: null,
  };
  run.layers[layer].push(spec.id);
  run.tasks.set(spec.id, entry);
  return entry;
}

function finish(run, result) {
  run.finished = true;
  run.status = result.status;
  if (result.answer != null) run.answer = result.answer;
  for (const r of result.tasks || []) {
    const t = run.tasks.get(r.id);
    if (t) {
      t.status = r.status;
      if (r.result !== undefined) t.result = r.result;
      if (r.error != null) t.error = r.error;
    }
  }
  if (result.error) note(`error: ${result.error}`);
  if (run.selected != null) showTask(run, run.selected);
  refreshRuns();
}

function note(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("notes").append(li);
}

function setConn(text) { $("conn").textContent = text ? `stream: ${text}` : ""; }

// ---- drawing ----------------------------------------------------------------------------

let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(draw);
}

function draw() {
  frame = 0;
  const run = plait.run;
  if (!run) return;
  drawHead(run);
  drawGraph(run);
  drawTimeline(run);
  if (run.textDirty) { drawText(run); run.textDirty = false; }
}

function drawHead(run) {
  const counts = {};
  for (const t of run.tasks.values()) counts[t.status] = (counts[t.status] || 0) + 1;
  const status = $("run-status");
  status.textContent = run.status;
  status.className = `badge ${run.status}`;
  const parts = Object.entries(counts).map(([s, n]) => `${s} ${n}`);
  const text = `${run.tasks.size} tasks` + (parts.length ? ` · ${parts.join(" · ")}` : "");
  const el = $("run-counts");
  el.textContent = text;
  el.dataset.total = run.tasks.size;
  el.dataset.done = counts.done || 0;
  $("cancel").hidden = run.finished;
  if (run.answer != null) { $("answer").hidden = false; $("answer").textContent = run.answer; }
}

function graphScale(run) {
  const rows = Math.max(1, ...run.layers.map((l) => l.length));
  const cols = Math.max(1, run.layers.length);
  const h = NODE.pad * 2 + rows * (NODE.h + NODE.gy);
  const w = NODE.pad * 2 + cols * (NODE.w + NODE.gx);
  return { scale: Math.min(1, MAX_CANVAS / h, MAX_CANVAS / w), w, h };
}

function nodeBox(t) {
  return { x: NODE.pad + t.layer * (NODE.w + NODE.gx), y: NODE.pad + t.row * (NODE.h + NODE.gy) };
}

function sizeCanvas(canvas, w, h) {
  const ratio = window.devicePixelRatio || 1;
  const pw = Math.ceil(w * ratio), ph = Math.ceil(h * ratio);
  if (canvas.width !== pw || canvas.height !== ph) {
    canvas.width = pw; canvas.height = ph;
    canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return ctx;
}

function drawGraph(run) {
  const canvas = $("graph");
  const { scale, w, h } = graphScale(run);
  const ctx = sizeCanvas(canvas, Math.ceil(w * scale), Math.ceil(h * scale));
  ctx.scale(scale, scale);
  ctx.lineWidth = 1;
  for (const t of run.tasks.values()) { // $N edges, coloured by their input's status
    const to = nodeBox(t);
    for (const dep of t.deps) {
      const parent = run.tasks.get(dep);
      if (!parent) continue;
      const from = nodeBox(parent);
      ctx.strokeStyle = STATUS_COLORS[parent.status] || STATUS_COLORS.pending;
      ctx.globalAlpha = 0.55;
      ctx.beginPath();
      ctx.moveTo(from.x + NODE.w, from.y + NODE.h / 2);
      ctx.bezierCurveTo(from.x + NODE.w + NODE.gx / 2, from.y + NODE.h / 2,
        to.x - NODE.gx / 2, to.y + NODE.h / 2, to.x, to.y + NODE.h / 2);
      ctx.stroke();
    }
  }
  ctx.globalAlpha = 1;
  ctx.font = NODE_FONT;
  ctx.textBaseline = "middle";
  const labels = scale > 0.45;
  for (const t of run.tasks.values()) {
    const { x, y } = nodeBox(t);
    ctx.fillStyle = STATUS_COLORS[t.status] || STATUS_COLORS.pending;
    ctx.fillRect(x, y, NODE.w, NODE.h);
    if (run.selected === t.id) {
      ctx.strokeStyle = "#111"; ctx.lineWidth = 2; ctx.strokeRect(x - 1, y - 1, NODE.w + 2, NODE.h + 2);
      ctx.lineWidth = 1;
    }
    if (labels) {
      ctx.fillStyle = "#fff";
      ctx.fillText(graphLabel(ctx, t), x + 4, y + NODE.h / 2, NODE_ROOM);
    }
  }
  canvas.dataset.nodes = run.tasks.size;
}

// A label shows its task's id whole (live edits' ids pass 1,000,000) and as much of the
// tool's name as fits after it, cut with "…"; the id alone if no letter of it fits.
function fitLabel(ctx, id, sep, tool, room) {
  const full = `${id}${sep}${tool}`;
  if (ctx.measureText(full).width <= room) return full;
  let lo = 0, hi = tool.length - 1; // the most letters of the tool that fit, with the "…"
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (ctx.measureText(`${id}${sep}${tool.slice(0, mid)}…`).width <= room) lo = mid;
    else hi = mid - 1;
  }
  return lo > 0 ? `${id}${sep}${tool.slice(0, lo)}…` : `${id}`;
}

const graphLabels = new Map(); // "id tool" -> its node label: nodes never change size

function graphLabel(ctx, t) {
  const key = `${t.id} ${t.tool}`;
  let label = graphLabels.get(key);
  if (label === undefined) {
    label = fitLabel(ctx, t.id, " ", t.tool, NODE_ROOM);
    graphLabels.set(key, label);
  }
  return label;
}

function nodeContext() {
  const ctx = $("graph").getContext("2d");
  ctx.font = NODE_FONT;
  return ctx;
}

function nodeLabel(id) {
  const t = plait.run && plait.run.tasks.get(id);
  return t ? graphLabel(nodeContext(), t) : null;
}

function labelWidth(text) {
  return nodeContext().measureText(text).width;
}

function nodeCenter(id) {
  const run = plait.run;
  const t = run && run.tasks.get(id);
  if (!t) return null;
  const { scale } = graphScale(run);
  const box = nodeBox(t);
  const scroller = $("graph-scroll"); // bring the node into view, as a person would scroll
  const cx = (box.x + NODE.w / 2) * scale, cy = (box.y + NODE.h / 2) * scale;
  scroller.scrollLeft = Math.max(0, cx - scroller.clientWidth / 2);
  scroller.scrollTop = Math.max(0, cy - scroller.clientHeight / 2);
  const rect = $("graph").getBoundingClientRect();
  return { x: rect.left + (box.x + NODE.w / 2) * scale, y: rect.top + (box.y + NODE.h / 2) * scale };
}

$("graph").addEventListener("click", (event) => {
  const run = plait.run;
  if (!run) return;
  const { scale } = graphScale(run);
  const rect = event.target.getBoundingClientRect();
  const x = (event.clientX - rect.left) / scale - NODE.pad;
  const y = (event.clientY - rect.top) / scale - NODE.pad;
  const layer = Math.floor(x / (NODE.w + NODE.gx));
  const row = Math.floor(y / (NODE.h + NODE.gy));
  if (x - layer * (NODE.w + NODE.gx) > NODE.w || y - row * (NODE.h + NODE.gy) > NODE.h) return;
  const id = (run.layers[layer] || [])[row];
  if (id !== undefined) selectTask(run, id);
});

// Bars on lanes: LLM calls first, then tasks; each lane reused once its bar has ended.
function packLanes(bars) {
  bars.sort((a, b) => a.start - b.start);
  const ends = [];
  for (const bar of bars) {
    let lane = ends.findIndex((end) => end <= bar.start);
    if (lane < 0) { lane = ends.length; ends.push(0); }
    ends[lane] = bar.end;
    bar.lane = lane;
  }
  return ends.length;
}

function drawTimeline(run) {
  const canvas = $("timeline");
  const now = run.tMax;
  const t0 = run.t0 ?? 0;
  const span = Math.max(now - t0, 0.001);
  const calls = [...run.calls.entries()].map(([call, c]) => ({
    kind: "llm", id: call, label: `${c.role} #${call}`, start: c.start, end: c.end ?? now,
  }));
  const tasks = [];
  for (const t of run.tasks.values()) {
    if (t.start == null) continue;
    tasks.push({ kind: "task", id: t.id, tool: t.tool, start: t.start, end: t.end ?? now,
      status: t.status });
  }
  const llmLanes = packLanes(calls);
  const taskLanes = packLanes(tasks);
  const width = Math.max(300, $("timeline-scroll").clientWidth - 4);
  const height = Math.min(MAX_CANVAS, (llmLanes + taskLanes) * LANE + 24);
  const ctx = sizeCanvas(canvas, width, height);
  const x = (t) => 4 + ((t - t0) / span) * (width - 8);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const bar = (b, top, color) => {
    const y = top + b.lane * LANE;
    const x0 = x(b.start), w = Math.max(1.5, x(b.end) - x0);
    ctx.fillStyle = color;
    ctx.fillRect(x0, y, w, LANE - 3);
    if (w > 40) {
      ctx.fillStyle = "#fff";
      const label = b.kind === "task" ? fitLabel(ctx, b.id, ". ", b.tool, w - 5) : b.label;
      ctx.fillText(label, x0 + 3, y + (LANE - 3) / 2, w - 5);
    }
  };
  for (const b of calls) bar(b, 2, STATUS_COLORS.llm);
  const top = 2 + llmLanes * LANE + (llmLanes ? 4 : 0);
  for (const b of tasks) bar(b, top, STATUS_COLORS[b.status] || STATUS_COLORS.pending);
  ctx.fillStyle = "#6b7480";
  ctx.fillText(`${span.toFixed(2)} s`, width - 50, height - 8);
  plait.timelineBars = { calls, tasks, top };
}

$("timeline").addEventListener("click", (event) => {
  const run = plait.run;
  const bars = plait.timelineBars;
  if (!run || !bars) return;
  const rect = event.target.getBoundingClientRect();
  const lane = Math.floor((event.clientY - rect.top - bars.top) / LANE);
  const span = Math.max(run.tMax - (run.t0 ?? 0), 0.001);
  const t = (run.t0 ?? 0) + ((event.clientX - rect.left - 4) / (rect.width - 8)) * span;
  const hit = bars.tasks.find((b) => b.lane === lane && b.start <= t && t <= b.end);
  if (hit) selectTask(run, hit.id);
});

function drawText(run) {
  for (const role of ["planner", "joiner"]) {
    const parts = [];
    for (const [call, c] of run.calls) {
      if (c.role === role) parts.push(`── call ${call}${c.error ? ` (error: ${c.error})` : ""} ──\n${c.text}`);
    }
    const pre = $(role);
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = parts.join("\n");
    if (stick) pre.scrollTop = pre.scrollHeight;
  }
}

// ---- one task ---------------------------------------------------------------------------

function selectTask(run, id) {
  run.selected = id;
  showTask(run, id);
  schedule();
}

function showTask(run, id) {
  const t = run.tasks.get(id);
  if (!t) return;
  const dl = document.createElement("dl");
  const row = (label, value, code) => {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    if (code) { const pre = document.createElement("pre"); pre.textContent = value; dd.append(pre); }
    else dd.textContent = value;
    dl.append(dt, dd);
  };
  row("task", `${t.id}. ${t.tool}`);
  row("status", t.status + (t.retries ? ` (retried ${t.retries}×)` : ""));
  row("arguments", JSON.stringify({ args: t.args, kwargs: t.kwargs }, null, 2), true);
  if (t.deps.length) row("inputs", t.deps.map((d) => `$${d}`).join(", "));
  if (t.start != null && t.end != null) row("took", `${(t.end - t.start).toFixed(3)} s`);
  if (t.result !== undefined && t.status === "done") row("result", JSON.stringify(t.result, null, 2), true);
  if (t.error) row("error", t.error, true);
  const detail = $("detail");
  detail.replaceChildren(dl);
  detail.dataset.task = id;
}

// ---- start ------------------------------------------------------------------------------

function fromHash() {
  const m = /run=([^&]+)/.exec(location.hash);
  if (m) {
    const id = decodeURIComponent(m[1]);
    if (!plait.run || plait.run.id !== id) openRun(id);
  }
}

window.addEventListener("hashchange", fromHash);
window.addEventListener("resize", schedule);
setInterval(refreshRuns, 2000);
setInterval(() => { if (plait.run && !plait.run.finished) schedule(); }, 500);
refreshRuns();
fromHash();
