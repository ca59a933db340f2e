// otagw dashboard: plain JS, no build step, no external assets. Reads the REST API and follows /api/v1/events (SSE).
// Authentication is the session cookie set by /login; unsafe requests add X-OTAGW-CSRF: 1.
// Views: "#/" (devices, rollouts, images), "#/rollouts", "#/images" (same page, scrolled), "#/device/<id>".
"use strict";

const API = "/api/v1";
const state = { devices: new Map(), rollouts: [], images: [], plan: null, samples: new Map(), health: null };

function $(sel) { return document.querySelector(sel); }
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "for") e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}
function hex(n, width = 4) { return n === null || n === undefined ? "?" : "0x" + n.toString(16).toUpperCase().padStart(width, "0"); }
function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}
function when(t) {
  if (!t) return "";
  const d = new Date(t * 1000), now = new Date();
  return d.toDateString() === now.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
function glob(pattern) {  // shell-style pattern (the selector's syntax) -> RegExp
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp("^" + re + "$");
}

async function api(path, opts = {}) {
  const headers = Object.assign({ "X-OTAGW-CSRF": "1" }, opts.headers || {});
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts = Object.assign({}, opts, { body: JSON.stringify(opts.json) });
  }
  const resp = await fetch(API + path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
  if (resp.status === 401) { window.location.href = "/login"; throw new Error("not logged in"); }
  if (resp.status === 204) return null;
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error(body && body.error ? body.error.message : resp.statusText);
  return body;
}

// ------------------------------------------------------------------------------------- names, versions
function isHexOf(s, n) { return typeof s === "string" && n !== null && n !== undefined && /^0x[0-9a-f]+$/i.test(s) && parseInt(s, 16) === n; }
// Zigbee file versions have no string of their own: show the four bytes (application release.build, stack
// release.build) dotted; the raw value is on hover. Matter versions have SoftwareVersionString.
function versionLabel(protocol, n, s) {
  if (s && !isHexOf(s, n)) return s;
  if (n === null || n === undefined) return "unknown";
  if (protocol === "zigbee") return [24, 16, 8, 0].map(b => (n >>> b) & 0xff).join(".");
  return String(n);
}
function versionRaw(protocol, n) {
  if (n === null || n === undefined) return "";
  return protocol === "zigbee" ? `file version ${hex(n, 8)} (${n})` : `SoftwareVersion ${n}`;
}
function versionSpan(protocol, n, s) {
  return el("span", { class: "version", title: versionRaw(protocol, n) }, versionLabel(protocol, n, s));
}
function makerModel(d) {
  const maker = d.manufacturer_name || (d.protocol === "matter" ? `vendor ${hex(d.vendor_id)}` : `manufacturer ${hex(d.vendor_id)}`);
  return [maker, d.model || `product ${hex(d.product_id)}`].join(" · ");
}

// ------------------------------------------------------------------------------------- states
const STATE_TEXT = {
  idle: "up to date", update_available: "update available", notified: "notified", querying: "asking",
  downloading: "downloading", downloaded: "downloaded", waiting_for_window: "waiting for window",
  waiting_to_apply: "waiting to install", applying: "installing", verifying: "verifying", updated: "updated",
  failed: "failed", cancelled: "cancelled", paused: "paused",
};
const STATE_GROUP = {  // colour families: a failed device is red, installing is distinct from downloading
  querying: "transfer", downloading: "transfer",
  downloaded: "apply", waiting_to_apply: "apply", applying: "apply", verifying: "apply",
  update_available: "waiting", notified: "waiting", waiting_for_window: "waiting", paused: "paused",
  updated: "ok", failed: "bad", idle: "rest", cancelled: "rest",
};
function stateChip(s, extra) {
  return el("span", { class: "state g-" + (STATE_GROUP[s] || "rest") + " s-" + s, "data-state": s },
    STATE_TEXT[s] || s.replace(/_/g, " "), extra ? " " + extra : "");
}
function nextStep(d) {  // what the owner can do about the last error
  if (d.state === "failed") {
    const auto = d.next_retry_at ? `The gateway retries by itself at ${when(d.next_retry_at)}` : "";
    return [auto, "Retry now, or pin/exclude the device if this version does not suit it."].filter(Boolean).join(". ");
  }
  if (d.excluded) return "This device is excluded from updates: clear the exclusion to update it.";
  if (d.state === "paused") return "Its rollout is paused: resume the rollout to continue.";
  return "";
}

// ------------------------------------------------------------------------------------- fleet
function progressBar(d) {
  const pct = d.percent === null || d.percent === undefined ? null : d.percent;
  const fill = el("div", { class: "fill", "data-percent": pct === null ? "" : String(pct) });
  fill.style.width = (pct || 0) + "%";
  return el("div", { class: "bar g-" + (STATE_GROUP[d.state] || "rest"), role: "progressbar", "aria-label": "transfer progress",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct === null ? "0" : String(pct) }, fill);
}
function progressCell(d) {
  const pct = d.percent === null || d.percent === undefined ? null : d.percent;
  const showBar = pct !== null && d.state !== "idle";
  if (!showBar) return el("td", { class: "progress-col", "data-label": "Progress" });  // nothing under way: empty
  return el("td", { class: "progress-col", "data-label": "Progress" }, progressBar(d), el("span", { class: "pct" }, pct + "%"));
}
function shortAddress(d) {  // enough of the address to tell identical models apart; the full id is on hover
  const tail = d.protocol === "zigbee" ? d.address.split(":").slice(-3).join(":") : d.address.slice(-6);
  return "…" + tail + (d.endpoint > 1 ? "/" + d.endpoint : "");
}
function deviceHref(d) { return "#/device/" + encodeURIComponent(d.device_id); }
function deviceRow(d) {
  const name = el("a", { href: deviceHref(d), class: "dev-name" }, d.display_name || d.device_id);
  return el("tr", { "data-device-id": d.device_id, "data-state": d.state, class: "st-" + (STATE_GROUP[d.state] || "rest") },
    el("td", { class: "dev", "data-label": "Device" },
      name, " ", el("span", { class: "badge " + d.protocol }, d.protocol),
      // maker and model under the name only when the name is not already made of them
      el("div", { class: "muted small" }, d.name || (d.extra && d.extra.node_label) ? makerModel(d) + " · " : "",
        el("span", { class: "mono", title: d.device_id }, shortAddress(d)))),
    el("td", { "data-label": "Version" }, versionSpan(d.protocol, d.current_version, d.current_version_string),
      d.target_version !== null && d.target_version !== d.current_version && !["idle", "updated"].includes(d.state)
        ? el("span", { class: "muted" }, " → ", versionSpan(d.protocol, d.target_version, d.target_version_string)) : null),
    el("td", { "data-label": "State" }, stateChip(d.state), d.excluded ? el("span", { class: "tag" }, "excluded") : null,
      d.pinned_version ? el("span", { class: "tag", title: "pinned version" }, "pinned " + d.pinned_version) : null),
    progressCell(d),
    el("td", { class: "error", "data-label": "Last error" }, d.last_error || ""));
}
function matchesFilter(d) {
  const p = $("#filter-protocol").value, s = $("#filter-state").value, t = $("#filter-text").value.trim().toLowerCase();
  const g = STATE_GROUP[d.state];
  const stateOk = !s || (s === "active" ? ["transfer", "apply"].includes(g) : s === "waiting" ? ["waiting", "paused"].includes(g) : d.state === s);
  const text = [d.display_name, d.name, d.model, d.manufacturer_name, d.device_id].join(" ").toLowerCase();
  return (!p || d.protocol === p) && stateOk && (!t || text.includes(t));
}
function sortedDevices() {
  return [...state.devices.values()].sort((a, b) =>
    (a.display_name || "").localeCompare(b.display_name || "") || a.device_id.localeCompare(b.device_id));
}
function renderDevices() {
  const rows = sortedDevices().filter(matchesFilter);
  $("#devices tbody").replaceChildren(...rows.map(deviceRow));
  $("#devices-empty").hidden = state.devices.size > 0;
  renderSummary();
}
function renderSummary() {
  const ds = [...state.devices.values()];
  const count = g => ds.filter(d => g.includes(STATE_GROUP[d.state])).length;
  const card = (label, n, cls, filter) => el("button", { class: "card " + cls, type: "button", "data-count": cls,
    onclick: () => { $("#filter-state").value = filter; renderDevices(); } }, el("strong", {}, String(n)), " ", label);
  $("#summary").replaceChildren(
    card("devices", ds.length, "all", ""),
    card("updating now", count(["transfer", "apply"]), "active", "active"),
    card("waiting", count(["waiting", "paused"]), "waiting", "waiting"),
    card("updated", ds.filter(d => d.state === "updated").length, "ok", "updated"),
    card("failed", ds.filter(d => d.state === "failed").length, "bad", "failed"));
}
function upsertDevice(d) {
  const old = state.devices.get(d.device_id);
  if (old && old.target_image_id !== d.target_image_id) state.samples.delete(d.device_id);
  state.devices.set(d.device_id, d);
  const row = document.querySelector(`tr[data-device-id="${CSS.escape(d.device_id)}"]`);
  if (row && matchesFilter(d)) { row.replaceWith(deviceRow(d)); renderSummary(); } else renderDevices();
  if (currentDevice() === d.device_id) renderDevicePage();
  if (!imagesTimer) imagesTimer = setTimeout(() => { imagesTimer = null; renderImages(); }, 300);  // "applies to" counts
}
let imagesTimer = null;
function applyProgress(ev) {
  const d = state.devices.get(ev.device_id);
  if (!d) { refreshDevice(ev.device_id); return; }
  const size = ev.size ?? ev.target_size ?? d.target_size;
  const offset = ev.offset ?? ev.acked_offset;
  let pct = ev.percent;
  if ((pct === undefined || pct === null) && size && offset !== undefined) pct = Math.min(100, Math.floor(offset * 100 / size));
  if (pct === undefined || pct === null) return;
  d.percent = pct;
  if (offset !== undefined) {
    d.acked_offset = offset;
    const s = state.samples.get(d.device_id) || [];
    s.push([ev.at ?? Date.now() / 1000, offset]);  // the gateway's clock: the rate is the device's, not the page's
    while (s.length > 30) s.shift();
    state.samples.set(d.device_id, s);
  }
  const row = document.querySelector(`tr[data-device-id="${CSS.escape(d.device_id)}"]`);
  if (row && !row.querySelector(".fill")) refreshDevice(d.device_id);  // rendered before its transfer began
  else if (row) {
    const fill = row.querySelector(".fill");
    fill.style.width = pct + "%";
    fill.dataset.percent = String(pct);
    row.querySelector(".pct").textContent = pct + "%";
    const bar = row.querySelector(".bar");
    bar.setAttribute("aria-valuenow", String(pct));
  }
  if (currentDevice() === d.device_id) renderTransfer(d);
}
async function refreshDevice(id) {
  try { upsertDevice(await api("/devices/" + encodeURIComponent(id))); } catch (e) { console.warn(e); }
}
async function loadDevices() {
  const list = await api("/devices");
  state.devices = new Map(list.map(d => [d.device_id, d]));
  renderDevices();
  renderImages();
  updateRolloutCount();
}

// ------------------------------------------------------------------------------------- device page
function currentDevice() {
  const m = location.hash.match(/^#\/device\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}
function rateAndEta(d) {
  if (!d.target_size) return null;
  const s = state.samples.get(d.device_id);
  let rate = null, at = d.acked_offset;
  if (s && s.length >= 2) {  // recent progress events
    const [t0, o0] = s[0], [t1, o1] = s[s.length - 1];
    if (t1 > t0 && o1 > o0) { rate = (o1 - o0) / (t1 - t0); at = o1; }
  }
  if (rate === null && d.state === "downloading" && d.last_progress_at > d.state_since && d.acked_offset > 0) {
    rate = d.acked_offset / (d.last_progress_at - d.state_since);  // the record: bytes since the download began
  }
  return rate ? { rate, eta: (d.target_size - at) / rate } : null;
}
function renderTransfer(d) {
  const box = $("#dv-transfer");
  if (!d.target_image_id || ["idle"].includes(d.state)) {
    box.replaceChildren(el("h3", {}, "Update"), el("p", { class: "muted" }, "No update in progress."));
    return;
  }
  const re = rateAndEta(d);
  const transferring = STATE_GROUP[d.state] === "transfer";
  box.replaceChildren(
    el("h3", {}, "Current update"),
    el("p", {}, "To ", versionSpan(d.protocol, d.target_version, d.target_version_string),
      ` (image ${d.target_image_id}, ${bytes(d.target_size)})`, d.rollout_id ? ` · rollout ${d.rollout_id}` : ""),
    el("div", { class: "transfer" }, progressBar(d), el("span", { class: "pct" }, (d.percent ?? 0) + "%")),
    el("p", { id: "dv-rate", class: "muted" },
      `${bytes(d.acked_offset)} of ${bytes(d.target_size)}`,
      transferring && re ? ` · ${bytes(Math.round(re.rate))}/s · about ${duration(re.eta)} left` : "",
      transferring && !re ? " · measuring rate…" : "",
      d.apply_at ? ` · installs at ${when(d.apply_at)}` : ""),
  );
}
function renderDevicePage() {
  const id = currentDevice();
  const d = id && state.devices.get(id);
  if (!d) { $("#dv-name").textContent = id ? "Unknown device" : ""; return; }
  $("#device-view").dataset.deviceId = d.device_id;
  $("#dv-name").textContent = d.display_name;
  $("#dv-state").replaceChildren(stateChip(d.state));
  $("#dv-sub").replaceChildren(el("span", { class: "badge " + d.protocol }, d.protocol), " ", makerModel(d), " · ",
    el("span", { class: "mono" }, d.device_id));
  const input = $("#dv-name-input");
  if (document.activeElement !== input) input.value = d.name || "";
  const pin = $("#dv-pin");
  if (document.activeElement !== pin) pin.value = d.pinned_version || "";
  $("#dv-exclude").checked = !!d.excluded;
  $("#dv-retry").disabled = d.state !== "failed";
  renderTransfer(d);
  const err = $("#dv-error");
  err.hidden = !d.last_error && d.state !== "failed";
  err.className = "panel " + (d.state === "failed" ? "alert" : "");
  err.replaceChildren(el("h3", {}, "Last error"), el("p", { class: "error" }, d.last_error || d.state_reason),
    el("p", { class: "next-step" }, nextStep(d)));
  const facts = [
    ["State", [stateChip(d.state), " since " + when(d.state_since)]], ["Why", d.state_reason],
    ["Installed", versionSpan(d.protocol, d.current_version, d.current_version_string)],
    ["Maker", d.manufacturer_name || hex(d.vendor_id)], ["Model", d.model || hex(d.product_id)],
    [d.protocol === "matter" ? "Vendor / product id" : "Manufacturer / image type", `${hex(d.vendor_id)} / ${hex(d.product_id)}`],
    ["Hardware", d.hardware_version ?? ""], ["Network", d.network], ["Address", d.address + " / endpoint " + d.endpoint],
    ["Sleepy", d.sleepy === null ? "unknown" : d.sleepy ? "yes" : "no"],
    ["Rollout", d.rollout_id ? `${d.rollout_id} (wave ${(d.rollout_wave ?? 0) + 1})` : ""],
    ["Attempts / failures", `${d.attempts} / ${d.failures}`], ["Next retry", when(d.next_retry_at)],
    ["Pinned", d.pinned_version || ""], ["Excluded", d.excluded ? "yes" : ""],
    ["First seen", when(d.first_seen)], ["Last seen", when(d.last_seen) + (d.present ? "" : " (left the network)")],
  ].filter(([, v]) => v !== "" && v !== null && v !== undefined);
  $("#dv-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, ...[].concat(v))]));
}
async function loadHistory(id) {
  try {
    const d = await api("/devices/" + encodeURIComponent(id));
    if (currentDevice() !== id) return;
    const items = d.history.slice().reverse().map(h => el("li", { class: "g-" + (STATE_GROUP[h.new_state] || "rest") },
      el("time", {}, when(h.at)), " ", stateChip(h.new_state), h.old_state ? el("span", { class: "muted" }, " from " + (STATE_TEXT[h.old_state] || h.old_state)) : null,
      el("div", { class: "reason" }, h.reason)));
    $("#dv-history").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No transitions yet.")]));
    delete d.history;
    upsertDevice(d);
  } catch (e) { $("#dv-history").replaceChildren(el("li", { class: "error" }, e.message)); }
}
let historyTimer = null;
function refreshHistorySoon(id) {
  if (historyTimer) return;
  historyTimer = setTimeout(() => { historyTimer = null; loadHistory(id); }, 300);
}
async function deviceAction(fn) {
  const status = $("#dv-action-status");
  status.className = "";
  status.textContent = "…";
  try { status.textContent = await fn(); }
  catch (e) { status.className = "error"; status.textContent = e.message; }
}
function route() {
  const id = currentDevice();
  $("#overview").hidden = !!id;
  $("#device-view").hidden = !id;
  if (id) {
    $("#dv-action-status").textContent = "";
    $("#dv-history").replaceChildren();
    renderDevicePage();
    loadHistory(id);
    $("#dv-name").focus();
  } else {
    const target = { "#/rollouts": "#rollouts", "#/images": "#images" }[location.hash];
    if (target) $(target).scrollIntoView();
  }
}

// ------------------------------------------------------------------------------------- rollouts
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
  const act = (verb) => el("button", { type: "button", "data-verb": verb, onclick: async () => {
    if (verb === "abort" && !confirm(`Abort rollout ${r.name}? Devices not yet updated are cancelled.`)) return;
    try { await api(`/rollouts/${encodeURIComponent(r.rollout_id)}/${verb}`, { method: "POST" }); await loadRollouts(); }
    catch (e) { alert(e.message); }
  } }, verb);
  const buttons = [];
  if (r.status === "active") buttons.push(act("pause"));
  if (r.status === "paused" || r.status === "halted") buttons.push(act("resume"));
  if (["active", "paused", "halted"].includes(r.status)) buttons.push(act("abort"));
  const done = r.waves.reduce((n, w) => n + w.updated, 0), members = r.waves.reduce((n, w) => n + w.members, 0);
  return el("article", { class: "rollout", "data-rollout-id": r.rollout_id },
    el("h3", {}, `${r.name} `, el("span", { class: "state r-" + r.status }, r.status)),
    el("p", {}, "to ", versionSpan(r.protocol, r.version, r.version_string), ` · image ${r.image_id} · ${done} of ${members} updated`,
      r.soak_s ? ` · soak ${duration(r.soak_s)}` : "", r.max_failures !== null ? ` · halts after ${r.max_failures} failure(s)` : ""),
    r.status_reason ? el("p", { class: "muted small" }, r.status_reason) : null,
    el("div", { class: "waves" }, ...r.waves.map(w => waveBox(w, w.index === r.current_wave && ["active", "paused", "halted"].includes(r.status)))),
    el("div", { class: "actions" }, ...buttons));
}
async function loadRollouts() {
  state.rollouts = await api("/rollouts");
  const list = state.rollouts.slice().reverse();  // newest first
  $("#rollout-list").replaceChildren(...list.map(rolloutCard));
  $("#rollouts-empty").hidden = state.rollouts.length > 0;
}
// which devices an image applies to (identity only; the version rules are the core's, seen in the plan)
function imageFits(i, d) {
  if (i.protocol !== d.protocol) return false;
  if (i.protocol === "matter") return i.vendor_id === d.vendor_id && i.product_id === d.product_id;
  const okV = i.vendor_id === 0xffff || i.vendor_id === d.vendor_id, okP = i.product_id === 0xffff || i.product_id === d.product_id;
  return okV && okP && (!i.model_ids || !i.model_ids.length || i.model_ids.includes(d.model));
}
function rolloutSelector() {
  const sel = {};
  const model = $("#ro-model").value.trim(), nets = $("#ro-networks").value.trim();
  if (model) sel.model = model.split(/\s*,\s*/).filter(Boolean);
  if (nets) sel.networks = nets.split(/\s*,\s*/).filter(Boolean);
  return sel;
}
function rolloutTargets() {
  const image = state.images.find(i => i.image_id === $("#ro-image").value);
  if (!image) return { image: null, devices: [] };
  const sel = rolloutSelector();
  const devices = [...state.devices.values()].filter(d => d.present && imageFits(image, d)
    && (!sel.model || (d.model && sel.model.some(p => glob(p).test(d.model))))
    && (!sel.networks || sel.networks.some(p => glob(p).test(d.network))));
  return { image, devices };
}
let planTimer = null;
function updateRolloutCount() {
  if (!$("#new-rollout").open) return;
  const { image, devices } = rolloutTargets();
  const need = image ? devices.filter(d => d.current_version !== image.numeric_version).length : 0;
  $("#ro-count").textContent = image
    ? `${devices.length} device(s) match; ${need} not on ${versionLabel(image.protocol, image.numeric_version, image.version_string)} yet.`
    : "Choose an image.";
  $("#ro-count").dataset.count = String(devices.length);
  clearTimeout(planTimer);
  planTimer = setTimeout(renderPlanPreview, 250);
}
async function renderPlanPreview() {
  const { devices } = rolloutTargets();
  try { state.plan = await api("/plan"); } catch (e) { $("#ro-plan-list").replaceChildren(el("li", { class: "error" }, e.message)); return; }
  const byId = new Map(state.plan.map(p => [p.device_id, p]));
  const items = devices.map(d => {
    const p = byId.get(d.device_id);
    return el("li", { "data-device-id": d.device_id }, el("strong", {}, d.display_name), " — ",
      p ? `now: ${p.outcome}${p.reason ? " (" + p.reason + ")" : ""}` : "not in the plan");
  });
  $("#ro-plan-list").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No device matches.")]));
}
function fillImageChoice() {
  const sel = $("#ro-image"), keep = sel.value;
  const opts = state.images.filter(i => i.valid).map(i => el("option", { value: i.image_id },
    `${i.protocol} ${versionLabel(i.protocol, i.numeric_version, i.version_string)} · ${i.description || i.file_name} (${i.image_id})`));
  sel.replaceChildren(...opts);
  if (keep && state.images.some(i => i.image_id === keep)) sel.value = keep;
}
async function createRollout(ev) {
  ev.preventDefault();
  const status = $("#ro-status");
  status.className = "";
  const waves = $("#ro-waves").value.split(/[\s,]+/).filter(Boolean);
  const body = {
    image: $("#ro-image").value, waves, soak_s: Number($("#ro-soak").value || 0),
    max_failures: $("#ro-maxfail").value === "" ? null : Number($("#ro-maxfail").value), selector: rolloutSelector(),
  };
  if ($("#ro-name").value.trim()) body.name = $("#ro-name").value.trim();
  if (!body.image) { status.className = "error"; status.textContent = "Choose an image."; return; }
  try {
    const r = await api("/rollouts", { method: "POST", json: body });
    status.textContent = `Started ${r.name} (${r.rollout_id}).`;
    await loadRollouts();
  } catch (e) { status.className = "error"; status.textContent = "Refused: " + e.message; }
}

// ------------------------------------------------------------------------------------- images
function imageRow(i) {
  const del = el("button", { type: "button", "aria-label": `delete image ${i.image_id}`, onclick: async () => {
    if (!confirm(`Delete image ${i.image_id}?`)) return;
    try { await api("/images/" + i.image_id, { method: "DELETE" }); await loadImages(); } catch (e) { alert(e.message); }
  } }, "delete");
  // approval: an "available" image is never offered without a rollout; approving offers it where it applies
  const approved = i.approval === "approved";
  const toggle = el("button", { type: "button", class: approved ? "approval" : "approval primary", onclick: async () => {
    const verb = approved ? "revoke" : "approve";
    try { await api(`/images/${i.image_id}/${verb}`, { method: "POST", json: {} }); await loadImages(); }
    catch (e) { alert(e.message); }
  } }, approved ? "revoke" : "approve");
  const approval = approved ? (i.approved_for ? "approved (filtered)" : "approved") : "available";
  const fits = [...state.devices.values()].filter(d => imageFits(i, d));
  const need = fits.filter(d => d.current_version !== null && d.current_version < i.numeric_version).length;
  const maker = i.owner || (i.protocol === "zigbee" ? zigbeeMaker(i.vendor_id) : null);
  return el("tr", { "data-image-id": i.image_id, class: i.valid ? "" : "invalid" },
    el("td", { "data-label": "Image" }, el("strong", {}, i.description || i.name), " ",
      el("span", { class: "badge " + i.protocol }, i.protocol),
      el("div", { class: "small muted" }, el("a", { href: `${API}/images/${i.image_id}/download`, class: "mono" }, i.image_id),
        ` · ${i.file_name} · ${bytes(i.size)}`),
      i.release_notes_url ? el("div", { class: "small" }, el("a", { href: i.release_notes_url, rel: "noreferrer" }, "release notes")) : null,
      i.valid ? null : el("div", { class: "error small" }, "invalid: not offered")),
    el("td", { "data-label": "For" }, maker ? maker + " · " : "", `${hex(i.vendor_id)} / ${hex(i.product_id)}`,
      i.model_ids && i.model_ids.length ? el("div", { class: "small muted" }, "models " + i.model_ids.join(", ")) : null),
    el("td", { "data-label": "Version" }, versionSpan(i.protocol, i.numeric_version, i.version_string)),
    el("td", { "data-label": "Applies to", class: "applies", title: fits.map(d => d.display_name).join(", ") },
      `${fits.length} device(s)`, need ? `, ${need} older` : ""),
    el("td", { "data-label": "Source" }, i.source, i.release_date ? el("div", { class: "small muted" }, i.release_date) : null),
    el("td", { class: "approval-state", "data-label": "Approval", title: i.approved_by || "" }, approval, " ", toggle),
    el("td", { "data-label": "Actions" }, del));
}
const makers = new Map();  // Zigbee manufacturer code -> name, learnt from device records (the API names them)
function zigbeeMaker(code) {
  for (const d of state.devices.values()) if (d.protocol === "zigbee" && d.vendor_id === code && d.manufacturer_name) return d.manufacturer_name;
  return makers.get(code) || null;
}
function renderImages() {
  $("#image-table tbody").replaceChildren(...state.images.map(imageRow));
  $("#images-empty").hidden = state.images.length > 0;
  fillImageChoice();
}
async function loadImages() {
  state.images = await api("/images");
  renderImages();
  updateRolloutCount();
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

// ------------------------------------------------------------------------------------- health + events
let healthTimer = null;
async function loadHealth() {
  const resp = await fetch("/healthz");
  const h = await resp.json();
  state.health = h;
  renderBanner();
}
function renderBanner() {
  const h = state.health;
  if (!h) return;
  // a failed adapter shows why and when the gateway tries it again (it retries with backoff by itself)
  const bad = Object.entries(h.adapters || {}).filter(([, a]) => !["running", "disabled"].includes(a.state));
  const banner = $("#banner");
  banner.hidden = bad.length === 0;
  banner.replaceChildren(...bad.map(([name, a]) => {
    const left = a.next_retry_at ? a.next_retry_at - Date.now() / 1000 : null;
    return el("p", { class: "adapter a-" + a.state, "data-adapter": name },
      el("strong", {}, `${name[0].toUpperCase() + name.slice(1)} adapter ${a.state}`), ": ", a.error || "no reason given",
      a.next_retry_at ? ` — next retry at ${when(a.next_retry_at)}` + (left > 0 ? ` (in ${duration(left)})` : "") : " — not retried automatically; check the configuration and restart",
      a.attempts ? ` · ${a.attempts} attempt(s) so far` : "");
  }));
  clearTimeout(healthTimer);
  healthTimer = setTimeout(() => loadHealth().catch(e => console.warn(e)), bad.length ? 5000 : 15000);
}
async function loadAll() {
  await Promise.all([loadImages(), loadRollouts(), loadHealth()]).catch(e => console.warn(e));
  await loadDevices().catch(e => console.warn(e));
  if (currentDevice()) route();
}

let pendingRollouts = null;
function soon(fn) {  // coalesce bursts of events into one reload
  if (pendingRollouts) return;
  pendingRollouts = setTimeout(() => { pendingRollouts = null; fn(); }, 150);
}
function onEvent(kind, data) {
  if (kind.includes("progress") && data.device_id) { applyProgress(data); return; }
  if (data.device_id) {
    refreshDevice(data.device_id);
    if (currentDevice() === data.device_id && kind === "state") refreshHistorySoon(data.device_id);
  }
  // wave counters are computed from device states: re-read them on every device transition, not only on
  // rollout events (a device reaching `updated` changes its wave's counts without a rollout event)
  if (kind === "state" || kind.includes("rollout") || data.rollout_id) soon(loadRollouts);
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
  $("#filter-state").addEventListener("change", renderDevices);
  $("#filter-text").addEventListener("input", renderDevices);
  $("#rollout-form").addEventListener("submit", createRollout);
  $("#rollout-form").addEventListener("input", updateRolloutCount);
  $("#new-rollout").addEventListener("toggle", updateRolloutCount);
  $("#dv-rename").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = currentDevice();
    deviceAction(async () => {
      const d = await api("/devices/" + encodeURIComponent(id), { method: "PATCH", json: { name: $("#dv-name-input").value } });
      upsertDevice(d);
      return d.name ? `Named “${d.name}”.` : "Name cleared.";
    });
  });
  $("#dv-overrides").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = currentDevice();
    deviceAction(async () => {
      const d = await api("/devices/" + encodeURIComponent(id), { method: "PATCH",
        json: { pinned_version: $("#dv-pin").value, excluded: $("#dv-exclude").checked } });
      upsertDevice(d);
      return (d.excluded ? "Excluded from updates" : "Included in updates") + (d.pinned_version ? `, pinned to ${d.pinned_version}.` : ", not pinned.");
    });
  });
  $("#dv-update").addEventListener("click", () => {
    const id = currentDevice();
    deviceAction(async () => {
      const r = await api("/devices/" + encodeURIComponent(id) + "/update", { method: "POST", json: {} });
      await loadRollouts();
      return `Updating to ${versionLabel(r.protocol, r.version, r.version_string)} (rollout ${r.rollout_id}).`;
    });
  });
  $("#dv-retry").addEventListener("click", () => {
    const id = currentDevice();
    deviceAction(async () => {
      upsertDevice(await api("/devices/" + encodeURIComponent(id) + "/retry", { method: "POST", json: {} }));
      return "Retry offered: the device gets its update at its next check.";
    });
  });
  $("#dv-notify").addEventListener("click", () => {
    const id = currentDevice();
    deviceAction(async () => {
      const r = await api("/devices/" + encodeURIComponent(id) + "/notify", { method: "POST", json: {} });
      return `Sent ${r.sent}: the device asks for its update now.`;
    });
  });
  window.addEventListener("hashchange", route);
  route();
  connect();
});
