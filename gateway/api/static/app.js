// otagw dashboard: plain JS, no build step. Reads the REST API and follows /api/v1/events (SSE).
// Authentication is the session cookie set by /login; unsafe requests add X-OTAGW-CSRF: 1.
"use strict";

const API = "/api/v1";
const state = { devices: new Map(), rollouts: [], images: [] };

function $(sel) { return document.querySelector(sel); }
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function hex(n, width = 4) { return n === null || n === undefined ? "?" : "0x" + n.toString(16).padStart(width, "0"); }
function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

async function api(path, opts = {}) {
  const headers = Object.assign({ "X-OTAGW-CSRF": "1" }, opts.headers || {});
  const resp = await fetch(API + path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
  if (resp.status === 401) { window.location.href = "/login"; throw new Error("not logged in"); }
  if (resp.status === 204) return null;
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error(body && body.error ? body.error.message : resp.statusText);
  return body;
}

// ------------------------------------------------------------------------------------------- fleet
function versionNumber(protocol, n) {  // Zigbee file versions are read in hex, Matter software versions in decimal
  if (n === null || n === undefined) return "?";
  return protocol === "zigbee" ? hex(n, 8) : String(n);
}
function versionText(d) {
  return d.current_version_string || versionNumber(d.protocol, d.current_version);
}
function targetText(d) {
  if (d.target_version === null && !d.target_version_string) return "";
  return d.target_version_string || versionNumber(d.protocol, d.target_version);
}
function progressCell(d) {
  const pct = d.percent === null || d.percent === undefined ? null : d.percent;
  const fill = el("div", { class: "fill", "data-percent": pct === null ? "" : String(pct) });
  fill.style.width = (pct || 0) + "%";
  const bar = el("div", { class: "bar" }, fill);
  const label = el("span", { class: "pct" }, pct === null ? "" : pct + "%");
  return el("td", { class: "progress-col" }, bar, label);
}
function deviceRow(d) {
  return el("tr", { "data-device-id": d.device_id, "data-state": d.state },
    el("td", { class: "mono", title: d.device_id }, d.device_id),
    el("td", {}, el("span", { class: "badge " + d.protocol }, d.protocol)),
    el("td", {}, d.model || (hex(d.vendor_id) + " / " + hex(d.product_id))),
    el("td", {}, versionText(d)),
    el("td", {}, targetText(d)),
    el("td", {}, el("span", { class: "state s-" + d.state }, d.state.replace(/_/g, " "))),
    progressCell(d),
    el("td", { class: "error" }, d.last_error || ""));
}
function visible(d) {
  const p = $("#filter-protocol").value, s = $("#filter-state").value.trim();
  return (!p || d.protocol === p) && (!s || d.state.includes(s));
}
function renderDevices() {
  const tbody = $("#devices tbody");
  const rows = [...state.devices.values()].filter(visible)
    .sort((a, b) => a.protocol.localeCompare(b.protocol) || a.device_id.localeCompare(b.device_id));
  tbody.replaceChildren(...rows.map(deviceRow));
  $("#devices-empty").hidden = state.devices.size > 0;
  renderSummary();
}
function renderSummary() {
  const cards = [];
  for (const proto of ["matter", "zigbee"]) {
    const ds = [...state.devices.values()].filter(d => d.protocol === proto);
    const count = s => ds.filter(d => s.includes(d.state)).length;
    cards.push(el("div", { class: "card " + proto, "data-protocol": proto },
      el("h3", {}, proto === "matter" ? "Matter" : "Zigbee"),
      el("p", {}, `${ds.length} devices`),
      el("p", {}, `${count(["querying", "downloading"])} transferring · ${count(["updated"])} updated · ` +
                  `${count(["failed"])} failed`)));
  }
  $("#summary").replaceChildren(...cards);
}
function upsertDevice(d) {
  state.devices.set(d.device_id, d);
  const old = document.querySelector(`tr[data-device-id="${CSS.escape(d.device_id)}"]`);
  if (old && visible(d)) { old.replaceWith(deviceRow(d)); renderSummary(); } else renderDevices();
}
function applyProgress(ev) {
  const d = state.devices.get(ev.device_id);
  if (!d) { refreshDevice(ev.device_id); return; }
  const size = ev.size ?? ev.target_size ?? d.target_size;
  const offset = ev.offset ?? ev.acked_offset;
  let pct = ev.percent;
  if ((pct === undefined || pct === null) && size && offset !== undefined) pct = Math.min(100, Math.floor(offset * 100 / size));
  if (pct === undefined || pct === null) return;
  d.percent = pct;
  if (offset !== undefined) d.acked_offset = offset;
  const row = document.querySelector(`tr[data-device-id="${CSS.escape(d.device_id)}"]`);
  if (!row) return;
  const fill = row.querySelector(".fill");
  fill.style.width = pct + "%";
  fill.dataset.percent = String(pct);
  row.querySelector(".pct").textContent = pct + "%";
}
async function refreshDevice(id) {
  try { upsertDevice(await api("/devices/" + encodeURIComponent(id))); } catch (e) { console.warn(e); }
}
async function loadDevices() {
  const list = await api("/devices");
  state.devices = new Map(list.map(d => [d.device_id, d]));
  renderDevices();
}

// ---------------------------------------------------------------------------------------- rollouts
function waveBox(w, current) {
  return el("div", { class: "wave w-" + w.state + (current ? " current" : ""), "data-wave": String(w.index) },
    el("strong", {}, `Wave ${w.index + 1} (${w.spec})`),
    el("span", {}, `${w.members} devices, ${w.offered} offered`),
    el("span", { class: "ok", "data-count": "updated" }, `✓ ${w.updated} updated`),
    el("span", { class: "bad", "data-count": "failed" }, `✗ ${w.failed} failed`),
    el("span", { "data-count": "in_progress" }, `… ${w.in_progress} in progress`),
    el("em", {}, w.state));
}
function rolloutCard(r) {
  const act = (verb) => el("button", { onclick: async () => {
    try { await api(`/rollouts/${encodeURIComponent(r.rollout_id)}/${verb}`, { method: "POST" }); await loadRollouts(); }
    catch (e) { alert(e.message); }
  } }, verb);
  const buttons = [];
  if (r.status === "active") buttons.push(act("pause"));
  if (r.status === "paused" || r.status === "halted") buttons.push(act("resume"));
  if (["active", "paused", "halted"].includes(r.status)) buttons.push(act("abort"));
  return el("div", { class: "rollout", "data-rollout-id": r.rollout_id },
    el("h3", {}, `${r.name} `, el("span", { class: "state r-" + r.status }, r.status)),
    el("p", {}, `image ${r.image_id} · ${r.protocol} ${hex(r.vendor_id)}/${hex(r.product_id)} → ` +
                `${r.version_string} · ${r.selector_text}` + (r.status_reason ? ` · ${r.status_reason}` : "")),
    el("div", { class: "waves" }, ...r.waves.map(w => waveBox(w, w.index === r.current_wave))),
    el("div", { class: "actions" }, ...buttons));
}
async function loadRollouts() {
  state.rollouts = await api("/rollouts");
  $("#rollout-list").replaceChildren(...state.rollouts.map(rolloutCard));
  $("#rollouts-empty").hidden = state.rollouts.length > 0;
}

// ------------------------------------------------------------------------------------------ images
function imageRow(i) {
  const del = el("button", { onclick: async () => {
    if (!confirm(`Delete image ${i.image_id}?`)) return;
    try { await api("/images/" + i.image_id, { method: "DELETE" }); await loadImages(); } catch (e) { alert(e.message); }
  } }, "delete");
  // approval: an "available" image is never offered without a rollout; approving offers it where it applies
  const approved = i.approval === "approved";
  const toggle = el("button", { class: "approval", onclick: async () => {
    const verb = approved ? "revoke" : "approve";
    try {
      await api(`/images/${i.image_id}/${verb}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      await loadImages();
    } catch (e) { alert(e.message); }
  } }, approved ? "revoke" : "approve");
  const approval = approved ? (i.approved_for ? "approved (filtered)" : "approved") : "available";
  return el("tr", { "data-image-id": i.image_id },
    el("td", { class: "mono" }, el("a", { href: `${API}/images/${i.image_id}/download` }, i.image_id)),
    el("td", {}, el("span", { class: "badge " + i.protocol }, i.protocol)),
    el("td", {}, `${hex(i.vendor_id)} / ${hex(i.product_id)}`),
    el("td", {}, i.version_string || String(i.numeric_version)),
    el("td", {}, bytes(i.size)),
    el("td", {}, i.file_name),
    el("td", {}, i.source),
    el("td", { class: "approval-state", title: i.approved_by || "" }, approval, " ", toggle),
    el("td", {}, del));
}
async function loadImages() {
  state.images = await api("/images");
  $("#image-table tbody").replaceChildren(...state.images.map(imageRow));
  $("#images-empty").hidden = state.images.length > 0;
}
async function upload(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) return;
  const status = $("#upload-status");
  status.textContent = "uploading…";
  try {
    const r = await api("/images?file_name=" + encodeURIComponent(file.name), {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    status.textContent = r.created ? `stored as ${r.image.image_id}` : `already stored as ${r.image.image_id}`;
    await loadImages();
  } catch (e) { status.textContent = "rejected: " + e.message; }
}

// ---------------------------------------------------------------------------------- health + events
async function loadHealth() {
  const resp = await fetch("/healthz");
  const h = await resp.json();
  // a failed adapter shows why and when the gateway tries it again (it retries with backoff by itself)
  const parts = Object.entries(h.adapters).map(([name, a]) =>
    el("span", { class: "adapter a-" + a.state, title: a.error || "" },
      `${name}: ${a.state}` + (a.error && a.state !== "running" ? ` (${a.error}` +
        (a.next_retry_at ? `; retry at ${new Date(a.next_retry_at * 1000).toLocaleTimeString()})` : ")") : "")));
  $("#health").replaceChildren(...parts);
}
setInterval(() => loadHealth().catch(e => console.warn(e)), 15000);  // adapter retries publish no events
async function loadAll() {
  await Promise.all([loadDevices(), loadRollouts(), loadImages(), loadHealth()]).catch(e => console.warn(e));
}

let pendingRollouts = null;
function soon(fn) {  // coalesce bursts of rollout events into one reload
  if (pendingRollouts) return;
  pendingRollouts = setTimeout(() => { pendingRollouts = null; fn(); }, 200);
}
function onEvent(kind, data) {
  if (kind.includes("progress") && data.device_id) { applyProgress(data); return; }
  if (data.device_id) refreshDevice(data.device_id);
  if (kind.includes("rollout") || data.rollout_id) soon(loadRollouts);
  if (kind.includes("image")) loadImages();
  if (kind.includes("adapter")) loadHealth();
}
function connect() {
  const live = $("#live");
  const es = new EventSource(API + "/events");
  es.onmessage = (m) => {
    const data = JSON.parse(m.data);
    if (data.kind === "hello") { live.textContent = "live"; live.className = "live on"; loadAll(); return; }
    if (data.kind === "overflow") { es.close(); setTimeout(connect, 500); return; }
    onEvent(data.kind || "", data);
  };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  window.otagwEvents = es;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#upload").addEventListener("submit", upload);
  $("#filter-protocol").addEventListener("change", renderDevices);
  $("#filter-state").addEventListener("input", renderDevices);
  connect();
});
