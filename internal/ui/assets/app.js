// runctl ui: the runs list and a run's page. Everything is fetched relative to the page's URL,
// whose path carries the server's secret; live data comes as Server-Sent Events.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const app = $("#app");
let stream = null;      // the EventSource of the page shown
let logAbort = null;    // aborts the log being read
const NS_SVG = "http://www.w3.org/2000/svg";
const PHASES = ["Queued", "Running", "Finished", "SetupError", "Cancelled"];
const TASK_PHASES = ["NotStarted", "Running", "Success", "Failed", "Stopped", "Skipped", "Cancelled"];

function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith("svg:") ? document.createElementNS(NS_SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// put replaces an element's children, leaving out the null ones (conditional parts).
function put(el, ...children) { el.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined && c !== false)); }

function setLive(text) { $("#live").textContent = text; }

function closeStreams() {
  if (stream) { stream.close(); stream = null; }
  if (logAbort) { logAbort.abort(); logAbort = null; }
}

function duration(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

function age(t) { return duration(t) || "-"; }

function badge(text, cls = text) { return h("span", { class: "badge " + cls }, text); }

async function post(path, body) {
  const resp = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

// ---- routing: #/ the list, #/runs/NS/NAME[/TASK] a run ----

function route() {
  closeStreams();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "runs" && parts.length >= 3) showRun(parts[1], parts[2], parts[3]);
  else showList();
}
window.addEventListener("hashchange", route);
let defaultNamespace = "";
fetch("api/config").then(r => r.json()).then(c => { defaultNamespace = c.namespace || ""; route(); });

// ---- the runs list ----

function listFilters() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  return { namespace: q.has("namespace") ? q.get("namespace") : defaultNamespace, changeGroup: q.get("changeGroup") || "", phase: q.get("phase") || "" };
}

function showList() {
  const f = listFilters();
  $("#crumbs").replaceChildren("runs");
  const form = h("form", { class: "filters", role: "search", onsubmit: e => e.preventDefault() },
    h("label", {}, "Namespace (empty: all)", h("input", { name: "namespace", value: f.namespace, size: 18 })),
    h("label", {}, "Change group", h("input", { name: "changeGroup", value: f.changeGroup, size: 18 })),
    h("label", {}, "Phase", h("select", { name: "phase" }, h("option", { value: "" }, "any"),
      PHASES.map(p => h("option", { value: p, selected: p === f.phase }, p)))));
  let timer;
  // A filter changes the URL (to bookmark) without a hashchange: the form keeps its focus, and
  // the list's stream starts again with the new filters.
  const apply = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      const q = new URLSearchParams(new FormData(form));
      history.replaceState(null, "", "#/?" + q.toString());
      connect(q);
    }, 300);
  };
  form.addEventListener("input", apply);
  const body = h("tbody");
  const table = h("table", { id: "runs" }, h("thead", {}, h("tr", {},
    ["Run", "Namespace", "Phase", "Result", "Tasks", "Change groups", "Age", ""].map(c => h("th", { scope: "col" }, c)))), body);
  const note = h("div", { class: "note" });
  app.replaceChildren(form, note, table);
  const rows = new Map(); // uid -> run
  const render = () => {
    const runs = [...rows.values()].sort((a, b) => new Date(b.created) - new Date(a.created));
    body.replaceChildren(...runs.map(r => h("tr", { "data-run": r.name, "data-phase": r.phase },
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}` }, r.name)),
      h("td", {}, r.namespace), h("td", {}, badge(r.phase)), h("td", {}, badge(r.result)),
      h("td", {}, `${r.done}/${r.total}`), h("td", {}, (r.changeGroups || []).join(", ")), h("td", {}, age(r.created)),
      h("td", {}, r.archived ? badge("archived", "archived") : "", r.restartedFrom ? h("span", { class: "note" }, " restart of " + r.restartedFrom) : ""))));
    if (!runs.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "note" }, "No runs match.")));
  };
  const connect = q => {
    if (stream) stream.close();
    stream = new EventSource("api/runs/watch?" + q.toString());
    stream.addEventListener("reset", e => {
      const l = JSON.parse(e.data);
      rows.clear();
      for (const r of l.runs) rows.set(r.uid, r);
      note.textContent = l.archiveError || "";
      render();
      setLive("live");
    });
    stream.addEventListener("run", e => {
      const { type, run } = JSON.parse(e.data);
      if (type === "DELETED") rows.delete(run.uid); else rows.set(run.uid, run);
      render();
    });
    stream.addEventListener("failure", e => { note.textContent = JSON.parse(e.data).error; });
    stream.onerror = () => {
      setLive("reconnecting…");
      // A refused list (RBAC, a namespace that does not exist) ends the stream: say why.
      fetch("api/runs?" + q.toString()).then(r => r.ok ? null : r.json()).then(e => { if (e) note.textContent = e.error; }).catch(() => {});
    };
  };
  connect(new URLSearchParams(f));
}

// ---- a run's page ----

const W = 168, H = 48, DX = 232, DY = 72, PAD = 24;

function showRun(ns, name, task) {
  const state = { ns, name, task, run: null, step: null, logFor: null };
  const base = `api/runs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  $("#crumbs").replaceChildren(h("a", { href: "#/" }, "runs"), " / ", ns, " / ", name);
  const head = h("div", { class: "runhead" });
  const msg = h("div", { class: "error", role: "alert" });
  const graph = h("div", { class: "graph", id: "graph" });
  const panel = h("section", { class: "panel", id: "panel", "aria-label": "task" }, h("p", { class: "note" }, "Select a task (Tab to it, Enter to open)."));
  app.replaceChildren(head, msg, h("div", { class: "runbody" }, h("div", { class: "graphcol" }, graph,
    h("div", { class: "legend" }, TASK_PHASES.map(p => h("span", { class: p }, p)), h("span", { class: "Waiting" }, "waiting for approval"))), panel));

  const act = async (what, fn) => {
    msg.textContent = "";
    try { return await fn(); } catch (err) { msg.textContent = `${what}: ${err.message}`; }
  };
  const renderHead = r => {
    const final = ["Finished", "SetupError", "Cancelled"].includes(r.phase);
    put(head, h("h1", {}, r.name), badge(r.phase), badge(r.result),
      r.archived ? badge("archived (read-only)", "archived") : null,
      r.stopping ? badge("stopping", "Stopped") : null,
      r.restartedFrom ? h("span", { class: "note" }, "restart of ", h("a", { href: `#/runs/${encodeURIComponent(ns)}/${encodeURIComponent(r.restartedFrom)}` }, r.restartedFrom)) : null,
      (r.changeGroups || []).length ? h("span", { class: "note" }, "groups: " + r.changeGroups.join(", ")) : null,
      h("span", { class: "note" }, r.startTime ? (r.endTime ? "took " : "running for ") + duration(r.startTime, r.endTime) : ""),
      h("span", { class: "actions" },
        !final && !r.archived ? h("button", { class: "danger", id: "stop", disabled: r.stopping, onclick: () => act("stop", () => post(base + "/stop")) }, "Stop") : null,
        final ? h("button", { id: "restart-failed", onclick: () => act("restart", async () => goTo(await post(base + "/restart", { failedTasksOnly: true }))) }, "Restart failed tasks") : null,
        final ? h("button", { id: "restart", onclick: () => act("restart", async () => goTo(await post(base + "/restart", { failedTasksOnly: false }))) }, "Restart all") : null));
  };
  const goTo = r => { location.hash = `#/runs/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`; };

  const select = name => {
    if (state.task === name) return;
    state.task = name; state.step = null;
    history.replaceState(null, "", `#/runs/${encodeURIComponent(ns)}/${encodeURIComponent(state.name)}/${encodeURIComponent(name)}`);
    renderGraph(state.run); renderPanel(state.run);
  };

  const renderGraph = r => {
    const cols = Math.max(1, ...r.tasks.map(t => t.col + 1)), rows = Math.max(1, ...r.tasks.map(t => t.row + 1));
    const width = PAD * 2 + (cols - 1) * DX + W, height = PAD * 2 + (rows - 1) * DY + H;
    const pos = new Map(r.tasks.map(t => [t.task, { x: PAD + t.col * DX, y: PAD + t.row * DY }]));
    const svg = h("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "graph of the run's tasks" },
      h("svg:defs", {}, h("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        h("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f" }))));
    for (const e of r.edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(h("svg:path", { class: "edge", "data-from": e.from, "data-to": e.to, "marker-end": "url(#arrow)",
        d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}` }));
      if (e.label) svg.append(h("svg:text", { class: "edge-label", x: mx, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, e.label));
    }
    // Nodes in reading order (column, then row): Tab walks the graph left to right.
    for (const t of [...r.tasks].sort((a, b) => a.col - b.col || a.row - b.row)) {
      const p = pos.get(t.task);
      const label = t.waitingApproval ? "waiting for approval" : t.phase + (t.fromRun ? " (kept)" : "");
      const g = h("svg:g", { class: `node phase-${t.phase}${t.waitingApproval ? " waiting" : ""}${state.task === t.task ? " selected" : ""}`,
        tabindex: 0, role: "button", "data-task": t.task, "data-phase": t.phase, transform: `translate(${p.x},${p.y})`,
        "aria-label": `task ${t.task}: ${label}`, "aria-pressed": state.task === t.task ? "true" : "false" },
        h("svg:title", {}, `${t.task}: ${label}`),
        h("svg:rect", { width: W, height: H, rx: 8 }),
        h("svg:text", { x: 10, y: 19 }, t.task.length > 20 ? t.task.slice(0, 19) + "…" : t.task),
        h("svg:text", { x: 10, y: 37, class: "phase" }, label + (t.startTime ? " · " + duration(t.startTime, t.endTime) : "")));
      g.addEventListener("click", () => select(t.task));
      g.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(t.task); } });
      svg.append(g);
    }
    const focused = document.activeElement && document.activeElement.getAttribute && document.activeElement.getAttribute("data-task");
    graph.replaceChildren(svg);
    if (focused) { const n = svg.querySelector(`[data-task="${CSS.escape(focused)}"]`); if (n) n.focus(); }
  };

  const renderPanel = r => {
    const t = r.tasks.find(t => t.task === state.task);
    if (!t) return;
    if (state.step === null || state.step >= t.steps.length) {
      // The last step that started: the one running, or the one that ended the task.
      let last = 0;
      t.steps.forEach((s, i) => { if (s.phase !== "NotStarted") last = i; });
      state.step = t.steps.length ? last : null;
    }
    const rows = t.steps.map((s, i) => h("tr", { class: i === state.step ? "selected" : "", "data-step": i },
      h("td", {}, h("button", { onclick: () => { state.step = i; renderPanel(state.run); }, "aria-label": `show the log of step ${i} ${s.name}` }, `${i}`)),
      h("td", {}, s.name), h("td", {}, badge(s.phase)), h("td", {}, s.exitCode ?? ""), h("td", {}, duration(s.startTime, s.endTime))));
    const keepLog = panel.querySelector("pre.log");
    put(panel,
      h("h2", {}, t.task, " ", badge(t.waitingApproval ? "waiting for approval" : t.phase, t.phase)),
      t.waitingApproval && !r.archived ? h("button", { class: "primary", id: "approve", onclick: () => act("approve", () => post(base + "/approve", { tasks: [t.task] })) }, "Approve " + t.task) : null,
      h("dl", {},
        h("dt", {}, "executor"), h("dd", {}, t.executor || "-"),
        h("dt", {}, "duration"), h("dd", {}, duration(t.startTime, t.endTime) || "-"),
        t.fromRun ? [h("dt", {}, "kept from"), h("dd", {}, t.fromRun)] : null,
        t.reason || t.message ? [h("dt", {}, "message"), h("dd", {}, [t.reason, t.message].filter(Boolean).join(": "))] : null),
      h("table", { class: "steps" }, h("thead", {}, h("tr", {}, ["#", "step", "phase", "exit", "time"].map(c => h("th", { scope: "col" }, c)))), h("tbody", {}, rows)),
      keepLog || h("pre", { class: "log", id: "log", tabindex: 0, "aria-label": "log of the selected step" }));
    loadLog(r, t);
  };

  // loadLog reads the selected step's log when the step or its phase changed since it was read
  // (a step read while it ran is followed to its end by the same request).
  const loadLog = (r, t) => {
    const pre = $("#log", panel);
    if (state.step === null) { pre.textContent = "This task has no steps yet."; return; }
    const s = t.steps[state.step];
    const running = s.phase === "Running";
    const key = `${t.task}/${state.step}`;
    if (state.logFor && state.logFor.key === key && (state.logFor.following || state.logFor.phase === s.phase)) return;
    if (logAbort) logAbort.abort();
    logAbort = new AbortController();
    state.logFor = { key, phase: s.phase, following: running };
    pre.textContent = "";
    if (s.phase === "NotStarted") { pre.textContent = "(not started)"; return; }
    const url = `${base}/tasks/${encodeURIComponent(t.task)}/steps/${state.step}/log` + (running ? "?follow=true" : "");
    const mine = state.logFor;
    fetch(url, { signal: logAbort.signal }).then(async resp => {
      if (!resp.ok) {
        const e = await resp.json().catch(() => ({ error: resp.statusText }));
        pre.textContent = "(" + e.error + ")";
        mine.following = false; mine.phase = "";  // try again at the next change
        return;
      }
      const reader = resp.body.getReader(), dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(dec.decode(value, { stream: true }));
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
      mine.following = false;
    }).catch(err => { if (err.name !== "AbortError") pre.textContent = "(" + err.message + ")"; });
  };

  stream = new EventSource(base + "/watch");
  stream.addEventListener("run", e => {
    const r = JSON.parse(e.data);
    state.run = r;
    document.title = `${r.name} · ${r.phase} · runservice`;
    renderHead(r); renderGraph(r);
    if (state.task) renderPanel(r);
    setLive(r.archived ? "archived" : "live");
  });
  stream.addEventListener("failure", e => { msg.textContent = JSON.parse(e.data).error; });
  stream.onerror = () => setLive("reconnecting…");
  // The first answer may be an error (no such run): the EventSource would retry silently.
  fetch(base).then(async resp => { if (!resp.ok) { const e = await resp.json().catch(() => ({})); msg.textContent = e.error || resp.statusText; closeStreams(); } });
}
