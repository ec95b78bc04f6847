// lmtailor's web console: a client of the server's own API (OpenAI's endpoints and /v1/lmtailor/*), so every
// button does what a script with the openai SDK or `lmtailor` on the command line would do.
import { WORDS } from "./i18n.js";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const FINAL = ["succeeded", "failed", "cancelled"];
const state = { models: [], files: [], page: null, monitor: null, evalJob: null, examples: [], arena: null };

// ---- words ------------------------------------------------------------------------------------------------
let lang = localStorage.getItem("lmtailor.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
function t(key, vars = {}) {
  const text = WORDS[lang][key] ?? WORDS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? ""));
}
function applyWords() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of $$("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of $$("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of $$("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  $("#lang").textContent = lang === "zh" ? "English" : "中文";
  $("#train-defaults").textContent = t("train.defaults");
}

// ---- talking to the server -------------------------------------------------------------------------------
function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem("lmtailor.key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}
async function failure(res) {
  if (res.status === 401) $("#key-dialog").showModal();
  let message = `${res.status} ${res.statusText}`;
  try { message = (await res.json()).error?.message || message; } catch { /* not JSON */ }
  return new Error(message);
}
async function api(path, { method = "GET", body, form } = {}) {
  let res;
  try {
    res = await fetch("/v1" + path, { method, headers: headers(!form), body: form ?? (body === undefined ? undefined : JSON.stringify(body)) });
  } catch { throw new Error(t("error.network")); }
  if (!res.ok) throw await failure(res);
  return res.json();
}
async function* streamChat(body, signal) {
  let res;
  try {
    res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), signal, body: JSON.stringify({ ...body, stream: true }) });
  } catch (e) { if (e.name === "AbortError") return; throw new Error(t("error.network")); }
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (e) { if (e.name === "AbortError") return; throw e; }
    if (chunk.done) return;
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new Error(parsed.error.message);
        const piece = parsed.choices?.[0]?.delta?.content;
        if (piece) yield piece;
      }
    }
  }
}
async function allEvents(jobId, seen = { ids: new Set(), list: [] }) {
  // the API pages newest first: read pages until events already seen (the whole history the first time),
  // then add the new ones oldest first, keeping the server's order (several events share a second)
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await api(`/fine_tuning/jobs/${jobId}/events?limit=100${after ? "&after=" + after : ""}`);
    let old = false;
    for (const e of page.data) { if (seen.ids.has(e.id)) { old = true; break; } fresh.push(e); }
    if (old || !page.has_more) break;
    after = page.last_id;
  }
  for (const e of fresh.reverse()) { seen.ids.add(e.id); seen.list.push(e); }
  return seen.list;
}

// ---- what every page shares ---------------------------------------------------------------------------------
function banner(message, kind = "error") {
  const el = $("#banner");
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(banner.timer);
  if (kind !== "error") banner.timer = setTimeout(() => { el.hidden = true; }, 5000);
}
async function busy(button, work) {
  const label = button?.textContent;
  if (button) { button.disabled = true; button.textContent = t("working"); }
  $("#busy").hidden = false;
  try { return await work(); } catch (e) { banner(e.message); } finally {
    $("#busy").hidden = true;
    if (button) { button.disabled = false; button.textContent = label; }
  }
}
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
const when = (s) => (s ? new Date(s * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB") : "–");
const num = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
function bytes(n) {
  if (!n) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}
function duration(s) {
  if (!Number.isFinite(s) || s < 0) return "?";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
function fill(select, items, { blank = null, keep = true } = {}) {
  const before = select.value;
  select.replaceChildren(...(blank ? [el("option", { value: "" }, blank)] : []), ...items.map(([v, label]) => el("option", { value: v }, label)));
  if (keep && items.some(([v]) => v === before)) select.value = before;
}
async function loadModels() {
  state.models = (await api("/lmtailor/models")).data;
  const all = state.models.map((m) => [m.id, m.id]);
  for (const id of ["#chat-model", "#arena-a", "#arena-b"]) fill($(id), all);
  fill($("#train-model"), state.models.filter((m) => m.kind !== "checkpoint").map((m) => [m.id, m.id]));
  fill($("#data-model"), all, { blank: "–" });
  fill($("#synth-generator"), state.models.filter((m) => m.kind !== "checkpoint").map((m) => [m.id, m.id]));
  if (!$("#arena-b").dataset.touched && all.length > 1 && $("#arena-b").value === $("#arena-a").value) $("#arena-b").value = all[1][0];
  $("#eval-models").replaceChildren(...state.models.map((m) => el("label", {}, el("input", { type: "checkbox", value: m.id }), " ", m.id)));
}
async function loadFiles() {
  state.files = (await api("/files")).data.filter((f) => f.purpose !== "fine-tune-results");
  const label = (f) => `${f.filename} · ${f.id}`;
  fill($("#data-files"), state.files.map((f) => [f.id, label(f)]));
  const training = state.files.filter((f) => f.purpose === "fine-tune").map((f) => [f.id, label(f)]);
  fill($("#train-file"), training);
  fill($("#train-val"), training, { blank: t("train.none") });
  for (const select of $$("#train-more .more-file")) fill(select, training);
  fill($("#eval-file"), state.files.map((f) => [f.id, label(f)]));
}

// ---- charts (SVG: a line chart and bars are all the console draws) -------------------------------------
// names in the SVG text come from the server (model names carry a user's suffix): escaped, never markup
const esc = (x) => String(x).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
function lineChart(box, series, xLabel) {
  const W = 640, H = 240, L = 48, R = 12, T = 12, B = 32;
  const points = series.flatMap((s) => s.points);
  if (!points.length) { box.replaceChildren(); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys, 0), y1 = Math.max(...ys) * 1.05 || 1;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), Y = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const svg = [`<svg viewBox="0 0 ${W} ${H}" role="img" class="line-chart"><g class="axis">`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>`,
    `<text x="${L}" y="${H - 8}">${x0}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${x1}</text>`,
    `<text x="${(L + W) / 2}" y="${H - 8}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text x="${L - 4}" y="${T + 8}" text-anchor="end">${num(y1, 2)}</text><text x="${L - 4}" y="${H - B}" text-anchor="end">${num(y0, 2)}</text></g>`];
  series.forEach((s, i) => {
    if (!s.points.length) return;
    svg.push(`<polyline class="series s${i}" points="${s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ")}"/>`);
    for (const p of s.points) svg.push(`<circle class="pt s${i}" data-series="${esc(s.key)}" cx="${X(p[0])}" cy="${Y(p[1])}" r="2.5"><title>${esc(s.name)} ${p[0]}: ${num(p[1], 4)}</title></circle>`);
    svg.push(`<text class="legend s${i}" x="${W - R}" y="${T + 12 + i * 14}" text-anchor="end">${esc(s.name)}</text>`);
  });
  box.innerHTML = svg.join("") + "</svg>";
}
function barChart(box, groups, shared = false) {
  // groups: [{label, bars: [{name, value, low, high}]}]; each group has its own scale (accuracy 0-1 beside chrF
  // 0-100) unless `shared` (a histogram)
  if (!groups.some((g) => g.bars.length)) { box.replaceChildren(); return; }
  const W = 640, H = 220, L = 12, B = 36, T = 22;
  const groupW = (W - L) / groups.length, barW = Math.min(48, (groupW - 16) / Math.max(1, groups[0].bars.length));
  const svg = [`<svg viewBox="0 0 ${W} ${H}" role="img" class="bar-chart"><g class="axis"><line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}"/></g>`];
  groups.forEach((g, gi) => {
    const top = Math.max(...(shared ? groups.flatMap((x) => x.bars) : g.bars).map((b) => b.high ?? b.value), 1e-9);
    const Y = (v) => H - B - (v / top) * (H - B - T);
    const x0 = L + gi * groupW + (groupW - barW * g.bars.length) / 2;
    g.bars.forEach((b, bi) => {
      const x = x0 + bi * barW;
      svg.push(`<rect class="bar s${bi % 4}" x="${x}" y="${Y(b.value)}" width="${barW - 4}" height="${H - B - Y(b.value)}"><title>${esc(b.name)}: ${num(b.value)}</title></rect>`);
      if (b.low !== undefined && b.high !== undefined) {
        const cx = x + (barW - 4) / 2;
        svg.push(`<line class="whisker" x1="${cx}" x2="${cx}" y1="${Y(b.low)}" y2="${Y(b.high)}"/>`);
      }
    });
    if (groups.length <= 8 || gi % Math.ceil(groups.length / 8) === 0) svg.push(`<text x="${L + gi * groupW + groupW / 2}" y="${H - 14}" text-anchor="middle">${esc(g.label)}</text>`);
    if (g.bars.length > 1) svg.push(`<text x="${L + gi * groupW + groupW / 2}" y="${T - 8}" text-anchor="middle">≤ ${num(top, 2)}</text>`);
  });
  box.innerHTML = svg.join("") + "</svg>";
}

// ---- Models ---------------------------------------------------------------------------------------------
async function showModels() {
  await loadModels();
  const picked = new Set($$("#merge-models input:checked").map((i) => i.value));
  $("#merge-models").replaceChildren(...state.models.filter((m) => m.kind !== "checkpoint").map((m) =>
    el("label", {}, el("input", { type: "checkbox", value: m.id, checked: picked.has(m.id) }), " ", m.id)));
  $("#models-table tbody").replaceChildren(...state.models.map((m) => el("tr", { class: "clickable", onclick: () => showCard(m) },
    el("td", {}, m.id), el("td", {}, m.kind), el("td", { title: m.card?.base_model ?? "" }, m.card?.base_model?.split("/").at(-1) ?? "–"),
    el("td", {}, m.card?.strategy ?? "–"), el("td", {}, num(m.loss ?? m.card?.metrics?.final_loss, 4)), el("td", {}, when(m.created)))));
}
// Retention (what tuning cost): "87% [82%, 91%] · 120/138 · facts 90%, writing 80%"
function keptText(r) {
  if (!r?.eligible) return "–";
  const pct = (v) => `${Math.round(v * 100)}%`;
  const cats = Object.entries(r.by_category ?? {}).map(([k, v]) => `${k} ${pct(v.value)}`).join(", ");
  return `${pct(r.value)} [${pct(r.ci_low)}, ${pct(r.ci_high)}] · ${r.kept}/${r.eligible}${cats ? ` · ${cats}` : ""}`;
}
function showCard(m) {
  const box = $("#model-card");
  const card = m.card;
  const rows = card ? [["base", card.base_model], ["parent", card.parent ?? "–"], ["strategy", card.strategy],
    ["data", card.data?.sources ? card.data.sources.map((s) => `${s.file ?? s.name} ${Math.round(s.weight * 100)}% (${s.rows_drawn} ${t("data.rowsWord")})`).join(", ")
      : card.data?.train ? [card.data.train.file ?? card.data.train.path?.split("/").at(-1), card.data.train.rows && `${card.data.train.rows} ${t("data.rowsWord")}`].filter(Boolean).join(", ") : "–"],
    ...Object.entries(card.hyperparameters ?? {}).filter(([k]) => ["learning_rate", "epochs", "n_epochs", "batch_size", "max_length", "lora_r", "precision", "recite"].includes(k)),
    ...(card.metrics?.retention ? [[t("models.retention"), keptText(card.metrics.retention)]] : []),
    ...Object.entries(card.metrics ?? {}).filter(([k]) => k !== "retention").map(([k, v]) => [k, typeof v === "number" ? num(v, 4) : JSON.stringify(v)])] : [];
  const deletable = ["fine-tuned", "checkpoint", "tuned", "merged"].includes(m.kind);
  box.replaceChildren(
    el("h2", {}, t("models.card", { id: m.id })),
    card ? el("table", { class: "kv" }, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v ?? "–"))))) : el("p", { class: "hint" }, t("models.none")),
    el("div", { class: "row" },
      el("button", { type: "button", onclick: () => { location.hash = "chat"; $("#chat-model").value = m.id; } }, t("models.chat")),
      m.job ? el("button", { type: "button", id: "model-run", onclick: () => { state.monitor = null; location.hash = "train"; monitor(m.job); } }, t("models.run")) : null,
      card || m.job ? el("button", { type: "button", onclick: (e) => busy(e.target, () => download(m.id)) }, t("models.download")) : null,
      deletable ? el("button", { type: "button", class: "danger", onclick: (e) => busy(e.target, () => removeModel(m.id)) }, t("models.delete")) : null));
  box.hidden = false;
}
async function download(id) {
  const res = await fetch(`/v1/lmtailor/models/${encodeURIComponent(id)}/download`, { headers: headers(false) });
  if (!res.ok) throw await failure(res);
  const url = URL.createObjectURL(await res.blob());
  el("a", { href: url, download: id.replaceAll(":", "_") + ".zip" }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
async function removeModel(id) {
  if (!confirm(t("models.confirmDelete", { id }))) return;
  await api(`/models/${encodeURIComponent(id)}`, { method: "DELETE" });
  banner(t("models.deleted", { id }), "info");
  $("#model-card").hidden = true;
  await showModels();
}

async function merge() {
  const models = $$("#merge-models input:checked").map((i) => i.value);
  if (models.length < 2) throw new Error(t("merge.pick"));
  const weights = $("#merge-weights").value.split(/[,，\s]+/).filter(Boolean).map(Number);
  const spec = { models, method: $("#merge-method").value, ...(weights.length ? { weights } : {}) };
  let job = await api("/lmtailor/jobs", { method: "POST", body: { type: "merge", spec, suffix: $("#merge-suffix").value.trim() || undefined } });
  job = await waitJob(job, $("#merge-status"), "merge.running");
  $("#merge-status").textContent = t("merge.done", { model: job.fine_tuned_model });
  await showModels();
}

async function waitJob(job, status, running) {
  while (!FINAL.includes(job.status)) {
    status.textContent = t(running, { id: job.id, status: job.status });
    await new Promise((ok) => setTimeout(ok, 1000));
    job = await api(`/lmtailor/jobs/${job.id}`);
  }
  status.className = "status " + job.status;
  if (job.status !== "succeeded") throw new Error(job.error?.message ?? job.status);
  return job;
}

// ---- Data -----------------------------------------------------------------------------------------------
async function showData() { await Promise.all([loadModels(), loadFiles()]); }
async function upload() {
  const file = $("#data-upload").files[0];
  if (!file) throw new Error(t("data.pickFile"));
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file);
  const made = await api("/files", { method: "POST", form });
  banner(t("data.uploaded1", { name: made.filename, id: made.id }), "info");
  await loadFiles();
  $("#data-files").value = made.id;
  await inspect();
}
async function synth() {
  const files = [...$("#synth-docs").files];
  if (!files.length) throw new Error(t("synth.pick"));
  const docs = [];
  for (const file of files) {
    const form = new FormData();
    form.append("purpose", "user_data");
    form.append("file", file);
    docs.push((await api("/files", { method: "POST", form })).id);
  }
  const generator = $("#synth-endpoint").value.trim() || $("#synth-generator").value;
  const spec = { docs, generator, pairs_per_chunk: Number($("#synth-pairs").value), paraphrases: Number($("#synth-paraphrases").value) };
  spec.eval_paraphrases = Math.min(1, spec.paraphrases);
  $("#synth-result").hidden = true;
  $("#synth-status").className = "status";
  $("#synth-status").textContent = "";
  let job = await api("/lmtailor/jobs", { method: "POST", body: { type: "synth", spec } });
  job = await waitJob(job, $("#synth-status"), "synth.running");
  const r = job.result;
  $("#synth-status").textContent = t("synth.done", { train: r.train_rows, eval: r.eval_rows });
  const dropped = Object.entries(r.dropped).map(([k, v]) => `${k.replaceAll("_", " ")}: ${v}`).join(", ") || "–";
  $("#synth-result").replaceChildren(
    el("div", {}, t("synth.counts", { docs: r.documents.length, chunks: r.chunks, kept: r.pairs_kept, made: r.pairs_generated, pkept: r.paraphrases_kept, pmade: r.paraphrases_generated })),
    el("div", {}, `${t("data.dropped")}: ${dropped}`),
    el("div", {}, t("synth.files", { train: r.files.train, eval: r.files.eval })));
  $("#synth-result").hidden = false;
  await loadFiles();
  $("#data-files").value = r.files.train;
}
async function inspect() {
  const id = $("#data-files").value;
  if (!id) throw new Error(t("data.pickFile"));
  const r = await api(`/lmtailor/files/${id}/inspect`, { method: "POST", body: { model: $("#data-model").value || null } });
  $("#data-result").hidden = false;
  const s = r.summary;
  $("#data-summary").replaceChildren(
    el("p", { class: r.bad ? "warn" : "ok" }, t("data.summary", { file: r.filename, rows: r.rows, good: r.good, bad: r.bad })),
    el("p", {}, `${t("data.formats")}: ${Object.entries(s.formats).map(([k, v]) => `${k} ${v}`).join(", ") || "–"} · ${t("data.roles")}: ${Object.entries(s.roles).map(([k, v]) => `${k} ${v}`).join(", ")}`),
    s.tokens ? el("p", {}, `p50 ${s.tokens.p50} · p90 ${s.tokens.p90} · p99 ${s.tokens.p99} · max ${s.tokens.max}`) : el("p", { class: "hint" }, t("data.noTokens")));
  $("#data-errors-box").hidden = !r.errors.length;
  $("#data-errors tbody").replaceChildren(...r.errors.map((e) => el("tr", { class: "bad-row" }, el("td", {}, `${r.filename}:${e.line ?? "–"}`), el("td", {}, e.reason))));
  $("#data-preview tbody").replaceChildren(...r.preview.map((row) => el("tr", {}, el("td", {}, row.line ?? ""),
    el("td", {}, row.messages.map((m) => el("div", { class: "turn" }, el("b", {}, m.role + ": "), m.content))))));
  const h = r.histogram;
  if (h) barChart($("#data-histogram"), h.counts.map((c, i) => ({ label: String(h.start + i * h.width), bars: [{ name: `${h.start + i * h.width}–${h.start + (i + 1) * h.width - 1}`, value: c }] })), true);
  else $("#data-histogram").replaceChildren(el("p", { class: "hint" }, t("data.noTokens")));
}
async function clean() {
  const id = $("#data-files").value;
  if (!id) throw new Error(t("data.pickFile"));
  const r = await api(`/lmtailor/files/${id}/clean`, { method: "POST", body: {
    dedup: $("#clean-dedup").checked, near_dup_threshold: Number($("#clean-threshold").value), mask_pii: $("#clean-pii").checked,
    model: $("#data-model").value || null } });
  const changed = Object.entries(r.report).filter(([k, v]) => k !== "input" && v).map(([k, v]) => `${k} ${v}`).join(", ");
  const box = $("#clean-result");
  box.replaceChildren(el("p", { class: "ok" }, t("data.cleaned", { before: r.before.rows, after: r.after.rows, file: `${r.file.filename} (${r.file.id})` })),
    el("p", {}, `${t("data.dropped")}: ${changed || "–"}`));
  box.hidden = false;
  await loadFiles();
}
async function split() {
  const id = $("#data-files").value;
  if (!id) throw new Error(t("data.pickFile"));
  const ratios = $("#split-ratios").value.split(/[,，\s]+/).filter(Boolean).map(Number);
  const r = await api(`/lmtailor/files/${id}/split`, { method: "POST", body: { ratios, seed: Number($("#split-seed").value), on_error: $("#split-skip").checked ? "skip" : "fail" } });
  const box = $("#split-result");
  box.replaceChildren(el("p", {}, t("data.splitDone") + ": " + Object.entries(r.files).map(([k, f]) => `${k}: ${f.rows} ${t("data.rowsWord")} (${f.id})`).join(" · ")
    + (r.skipped ? ` · ${t("data.splitSkipped", { n: r.skipped })}` : "")));
  box.hidden = false;
  await loadFiles();
}

// ---- Train ----------------------------------------------------------------------------------------------
async function showTrain() {
  await Promise.all([loadModels(), loadFiles()]);
  applyWords();
  estimate();
  if (state.monitor) monitor(state.monitor.id);
}
const numberOr = (v, parse = Number) => (v.trim() === "" || v.trim() === "auto" ? undefined : parse(v));
async function estimate() {
  const model = $("#train-model").value;
  if (!model) return;
  const strategy = $("#train-strategy").value;
  try {
    const e = await api("/lmtailor/estimate", { method: "POST", body: { model, strategy, batch_size: numberOr($("#train-batch").value) ?? 8,
      max_length: numberOr($("#train-maxlen").value) ?? 512, lora_r: Number($("#train-rank").value) || 32 } });
    const text = t("train.memory", { need: bytes(e.total), weights: bytes(e.weights), optim: bytes(e.optimizer + e.gradients),
      act: bytes(e.activations + e.logits), rt: bytes(e.runtime), have: bytes(e.machine) });
    $("#train-memory").textContent = text + (e.machine && e.total > 0.8 * e.machine ? " " + t("train.memoryLow") : "");
    $("#train-memory").className = "memory" + (e.machine && e.total > 0.8 * e.machine ? " warn" : "");
  } catch (err) { $("#train-memory").textContent = err.message; }
}
// More training files mixed into the run (lmtailor.more_training_files): a file and its share of the mix each
function addMoreFile() {
  const select = el("select", { class: "more-file" });
  fill(select, state.files.filter((f) => f.purpose === "fine-tune").map((f) => [f.id, `${f.filename} · ${f.id}`]));
  const row = el("div", { class: "row more" },
    el("label", {}, el("span", { "data-i18n": "train.moreFile" }, t("train.moreFile")), select),
    el("label", {}, el("span", { "data-i18n": "train.weight" }, t("train.weight")), el("input", { class: "more-weight", placeholder: "auto", size: 6 })),
    el("button", { type: "button", "data-i18n": "train.remove", onclick: () => row.remove() }, t("train.remove")));
  $("#train-more").append(row);
}
function moreFiles() {
  return [...$$("#train-more .more")].map((row) => {
    const weight = numberOr(row.querySelector(".more-weight").value);
    return { file: row.querySelector(".more-file").value, ...(weight !== undefined ? { weight } : {}) };
  }).filter((m) => m.file);
}
async function launch() {
  const options = { strategy: $("#train-strategy").value };
  const more = moreFiles();
  if (more.length) options.more_training_files = more;
  const lr = numberOr($("#train-lr").value);
  if (lr !== undefined) options.learning_rate = lr;
  if (options.strategy === "lora") options.lora_r = Number($("#train-rank").value) || 32;
  const maxlen = numberOr($("#train-maxlen").value, (v) => parseInt(v, 10));
  if (maxlen !== undefined) options.max_length = maxlen;
  const valRatio = Number($("#train-valratio").value);
  if (valRatio > 0) options.val_ratio = valRatio;
  const kind = $("#train-method").value;
  const replay = numberOr($("#train-replay").value);  // the rule's share when left empty; replay is for supervised
  if (replay !== undefined && kind === "supervised") options.replay_ratio = replay;
  const hp = { n_epochs: numberOr($("#train-epochs").value) ?? "auto", batch_size: numberOr($("#train-batch").value, (v) => parseInt(v, 10)) ?? "auto" };
  const job = await api("/fine_tuning/jobs", { method: "POST", body: {
    model: $("#train-model").value, training_file: $("#train-file").value, validation_file: $("#train-val").value || undefined,
    suffix: $("#train-suffix").value.trim() || undefined, method: { type: kind, [kind]: { hyperparameters: hp } }, lmtailor: options } });
  banner(t("train.started", { id: job.id }), "info");
  monitor(job.id);
}
function monitor(jobId) {
  if (state.monitor?.id !== jobId) state.monitor = { id: jobId, events: { ids: new Set(), list: [] } };
  const m = state.monitor;
  $("#train-monitor").hidden = false;
  clearTimeout(m.timer);
  const tick = async () => {
    if (state.monitor !== m) return;
    try {
      const [job, events] = await Promise.all([api(`/fine_tuning/jobs/${jobId}`), allEvents(jobId, m.events)]);
      drawMonitor(job, events);
      if (FINAL.includes(job.status)) { if (job.status === "succeeded") loadModels(); return; }
    } catch (e) { banner(e.message); }
    if (state.page === "train") m.timer = setTimeout(tick, 1500);
  };
  tick();
}
function drawMonitor(job, events) {
  const metrics = events.filter((e) => e.type === "metrics" && e.data);
  const last = metrics.at(-1)?.data;
  $("#mon-title").textContent = `${job.id} · ${job.model}${job.user_provided_suffix ? " · " + job.user_provided_suffix : ""}`;
  const step = last?.step ?? 0, total = last?.total_steps ?? 0;
  $("#mon-bar").style.width = total ? `${(100 * step) / total}%` : job.status === "succeeded" ? "100%" : "0";
  let status = t("job.status", { status: job.status, step, total: total || "?" });
  // time left from the pace since the last (re)start: the steps of the newest run of metrics
  const since = metrics.filter((e) => e.created_at >= (job.started_at ?? 0));
  if (!FINAL.includes(job.status) && since.length >= 2 && total) {
    const a = since[0], b = since.at(-1);
    const pace = (b.data.step - a.data.step) / Math.max(1, b.created_at - a.created_at);
    if (pace > 0) status += " · " + t("job.left", { left: duration((total - step) / pace) });
  }
  if (job.status === "succeeded") status += " · " + t("job.done", { model: job.fine_tuned_model });
  if (job.status === "failed") status += " · " + t("job.failed", { error: job.error?.message ?? "?" });
  $("#mon-status").textContent = status;
  $("#mon-status").className = "status " + job.status;
  lineChart($("#mon-chart"), [
    { key: "train", name: t("chart.train"), points: metrics.filter((e) => e.data.train_loss !== undefined).map((e) => [e.data.step, e.data.train_loss]) },
    { key: "valid", name: t("chart.valid"), points: metrics.filter((e) => e.data.valid_loss !== undefined).map((e) => [e.data.step, e.data.valid_loss]) },
  ], t("chart.step"));
  const log = $("#mon-log");
  const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = events.map((e) => `${when(e.created_at)}  ${e.message}`).join("\n");
  if (stick) log.scrollTop = log.scrollHeight;
  $("#mon-pause").hidden = !["running", "validating_files", "queued"].includes(job.status);
  // a paused job, or one whose process kept dying: the API resumes both from their last checkpoint
  const revivable = job.status === "failed" && ["process_died", "interrupted"].includes(job.error?.code);
  $("#mon-resume").hidden = job.status !== "paused" && !revivable;
  $("#mon-cancel").hidden = FINAL.includes(job.status);
}
async function jobAction(action) {
  const id = state.monitor?.id;
  if (!id) return;
  await api(`/fine_tuning/jobs/${id}/${action}`, { method: "POST" });
  monitor(id);
}

// ---- Evaluate -------------------------------------------------------------------------------------------
async function showEvaluate() { await Promise.all([loadModels(), loadFiles()]); await drawHistory(); if (state.evalJob) watchEval(state.evalJob); }
// every evaluation in the store, whichever door started it (a CLI run is recorded there too): one click redraws it
async function drawHistory() {
  const jobs = (await api("/lmtailor/jobs?kind=eval&limit=50")).data;
  const fileName = (path) => { const base = String(path ?? "–").split("/").at(-1); return state.files.find((f) => base.startsWith(f.id + "."))?.filename ?? base; };
  const models = (o) => (o.models ?? []).map((m) => o._names?.[m] ?? m.split("/").at(-1)).join(", ");
  $("#eval-history tbody").replaceChildren(...jobs.map((j) => el("tr", { class: "clickable " + j.status, "data-job": j.id,
    onclick: () => { state.evalJob = j.id; watchEval(j.id).catch((e) => banner(e.message)); } },
    el("td", {}, when(j.created_at)), el("td", {}, models(j.lmtailor.options ?? {})), el("td", {}, fileName(j.lmtailor.options?.data)),
    el("td", {}, j.lmtailor.options?.door ?? "API"), el("td", {}, j.status), el("td", {}, j.id))));
}
async function runEval() {
  const models = $$("#eval-models input:checked").map((i) => i.value);
  const data = $("#eval-file").value;
  if (!models.length || !data) throw new Error(t("eval.pickTwo"));
  const metrics = $("#eval-metrics").value.split(/[,，\s]+/).filter(Boolean);
  const spec = { models, data, max_new_tokens: Number($("#eval-tokens").value) || 64, ...(metrics.length ? { metrics } : {}) };
  const job = await api("/lmtailor/jobs", { method: "POST", body: { type: "eval", spec } });
  state.evalJob = job.id;
  watchEval(job.id);
}
async function watchEval(id) {
  const job = await api(`/lmtailor/jobs/${id}`);
  $("#eval-status").textContent = t("eval.running", { id, status: job.status }) + (job.error ? ` · ${job.error.message}` : "");
  if (!FINAL.includes(job.status)) { if (state.page === "evaluate") setTimeout(() => watchEval(id).catch((e) => banner(e.message)), 1500); return; }
  if (job.result) await drawEval(id, job.result);
  if (state.page === "evaluate") await drawHistory();
}
async function drawEval(id, result) {
  $("#eval-result").hidden = false;
  const metrics = Object.keys(result.models[0].scores);
  const kept = result.models.some((m) => m.retention?.eligible);
  $("#eval-table thead").replaceChildren(el("tr", {}, el("th", {}, t("eval.model")), metrics.map((k) => el("th", {}, k)),
    kept ? el("th", { title: t("eval.retentionHint") }, t("eval.retention")) : null, el("th", {}, t("eval.vs"))));
  $("#eval-table tbody").replaceChildren(...result.models.map((m) => el("tr", {}, el("td", {}, m.name),
    metrics.map((k) => { const s = m.scores[k]; return el("td", {}, `${num(s.value)} [${num(s.ci_low)}, ${num(s.ci_high)}]`); }),
    kept ? el("td", { class: "retention" }, keptText(m.retention)) : null,
    el("td", {}, Object.entries(m.vs_baseline ?? {}).map(([k, v]) => `${k} ${v.delta >= 0 ? "+" : ""}${num(v.delta)} (p ${v.p_value < 0.001 ? "< 0.001" : num(v.p_value, 3)}, ${v.significant ? t("eval.significant") : t("eval.notSignificant")})`).join("; ") || "–"))));
  barChart($("#eval-chart"), metrics.map((k) => ({ label: k, bars: result.models.map((m) => ({ name: m.name, value: m.scores[k].value, low: m.scores[k].ci_low, high: m.scores[k].ci_high })) })));
  state.examples = (await api(`/lmtailor/jobs/${id}/predictions`)).data;
  state.evalModels = result.models.map((m) => m.name);
  drawExamples();
}
function drawExamples() {
  const filter = $("#eval-filter").value;
  const names = state.evalModels ?? [];
  $("#eval-examples thead").replaceChildren(el("tr", {}, el("th", {}, t("eval.question")), el("th", {}, t("eval.reference")), names.map((n) => el("th", {}, n)), el("th", {}, t("eval.change"))));
  $("#eval-examples tbody").replaceChildren(...state.examples.filter((x) => filter === "all" || x.change === filter).map((x) => el("tr", { class: x.change ?? "" },
    el("td", {}, x.question), el("td", {}, x.reference ?? "–"), names.map((n) => el("td", {}, x.answers[n]?.answer ?? "")), el("td", {}, x.change ? t("eval." + x.change) : "–"))));
}

// ---- Chat -----------------------------------------------------------------------------------------------
const chat = { messages: [], controller: null };
async function showChat() { await loadModels(); }
function bubble(role, text) {
  const node = el("div", { class: "msg " + role }, el("span", { class: "who" }, role === "user" ? t("chat.you") : $("#chat-model").value), el("div", { class: "text" }, text));
  $("#chat-log").append(node);
  return $(".text", node);
}
async function send(event) {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || chat.controller) return;
  $("#chat-input").value = "";
  bubble("user", text);
  chat.messages.push({ role: "user", content: text });
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  const system = $("#chat-system").value.trim();
  chat.controller = new AbortController();
  $("#chat-stop").hidden = false;
  $("#chat-send").disabled = true;
  let answer = "";
  try {
    for await (const piece of streamChat({ model: $("#chat-model").value, messages: [...(system ? [{ role: "system", content: system }] : []), ...chat.messages],
      temperature: Number($("#chat-temperature").value), top_p: Number($("#chat-top-p").value), max_tokens: Number($("#chat-max").value) }, chat.controller.signal)) {
      answer += piece;
      out.textContent = answer;
      $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
    }
    chat.messages.push({ role: "assistant", content: answer });
  } catch (e) { banner(e.message); out.textContent = answer; } finally {
    out.classList.remove("streaming");
    chat.controller = null;
    $("#chat-stop").hidden = true;
    $("#chat-send").disabled = false;
  }
}

// ---- Arena ----------------------------------------------------------------------------------------------
async function showArena() { await loadModels(); await drawTally(); }
async function ask(event) {
  event.preventDefault();
  const prompt = $("#arena-prompt").value.trim();
  let [a, b] = [$("#arena-a").value, $("#arena-b").value];
  if (!prompt) return;
  if (a === b) throw new Error(t("arena.same"));
  const blind = $("#arena-blind").checked;
  if (blind && Math.random() < 0.5) [a, b] = [b, a];
  state.arena = { a, b, blind, prompt };
  $("#arena-name-a").textContent = blind ? t("arena.hidden", { side: "A" }) : a;
  $("#arena-name-b").textContent = blind ? t("arena.hidden", { side: "B" }) : b;
  $("#arena-vote").hidden = true;
  const params = { messages: [{ role: "user", content: prompt }], temperature: 0.7, max_tokens: 256 };
  const run = async (model, box) => {
    box.textContent = "";
    box.classList.add("streaming");
    try { for await (const piece of streamChat({ model, ...params })) box.textContent += piece; } finally { box.classList.remove("streaming"); }
  };
  await Promise.all([run(a, $("#arena-out-a")), run(b, $("#arena-out-b"))]);
  $("#arena-vote").hidden = false;
}
async function vote(winner) {
  const s = state.arena;
  if (!s) return;
  await api("/lmtailor/arena/votes", { method: "POST", body: { model_a: s.a, model_b: s.b, winner, blind: s.blind, prompt: s.prompt } });
  $("#arena-name-a").textContent = s.a;
  $("#arena-name-b").textContent = s.b;
  $("#arena-vote").hidden = true;
  state.arena = null;
  banner(t("arena.thanks"), "info");
  await drawTally();
}
async function drawTally() {
  const rows = (await api("/lmtailor/arena/tally")).data;
  $("#arena-tally tbody").replaceChildren(...rows.map((r) => el("tr", {}, el("td", {}, `${r.model_a} — ${r.model_b}`), el("td", {}, r.wins_a), el("td", {}, r.wins_b), el("td", {}, r.ties), el("td", {}, r.both_bad))));
}

// ---- Jobs -----------------------------------------------------------------------------------------------
async function showJobs() {
  const jobs = (await api("/lmtailor/jobs?limit=100")).data;
  $("#jobs-table tbody").replaceChildren(...jobs.map((j) => el("tr", { class: "clickable " + j.status, onclick: () => jobDetail(j).catch((e) => banner(e.message)) },
    el("td", {}, j.id), el("td", {}, j.lmtailor.kind), el("td", {}, j.status), el("td", {}, j.model), el("td", {}, j.fine_tuned_model ?? j.error?.message ?? "–"), el("td", {}, when(j.created_at)))));
  if (state.page === "jobs") state.jobsTimer = setTimeout(() => showJobs().catch(() => {}), 4000);
}
async function jobDetail(job) {
  const events = await allEvents(job.id);
  $("#job-detail").hidden = false;
  $("#job-title").textContent = `${job.id} · ${job.lmtailor.kind}`;
  const last = events.filter((e) => e.type === "metrics").at(-1)?.data;
  $("#job-status").textContent = `${job.status}${last ? ` · step ${last.step}/${last.total_steps} · loss ${num(last.train_loss, 4)}` : ""}${job.error ? " · " + job.error.message : ""}`;
  $("#job-log").textContent = events.map((e) => `${when(e.created_at)}  ${e.message}`).join("\n");
  $("#job-cancel").hidden = FINAL.includes(job.status);
  $("#job-cancel").onclick = (e) => busy(e.target, async () => { await api(`/fine_tuning/jobs/${job.id}/cancel`, { method: "POST" }); await jobDetail(await api(`/fine_tuning/jobs/${job.id}`)); });
  $("#job-open").onclick = () => {
    if (job.lmtailor.kind === "eval") { state.evalJob = job.id; location.hash = "evaluate"; } else if (job.lmtailor.kind === "synth") { location.hash = "data"; } else { state.monitor = null; location.hash = "train"; monitor(job.id); }
  };
}

// ---- pages and start ------------------------------------------------------------------------------------
const PAGES = { models: showModels, data: showData, train: showTrain, evaluate: showEvaluate, chat: showChat, arena: showArena, jobs: showJobs };
function route() {
  const page = PAGES[location.hash.slice(1)] ? location.hash.slice(1) : localStorage.getItem("lmtailor.page") || "models";
  state.page = page;
  localStorage.setItem("lmtailor.page", page);
  clearTimeout(state.jobsTimer);
  for (const section of $$(".page")) section.hidden = section.id !== "page-" + page;
  for (const a of $$("#tabs a")) a.classList.toggle("active", a.dataset.tab === page);
  $("#banner").hidden = true;
  PAGES[page]().catch((e) => banner(e.message));
}
function start() {
  applyWords();
  $("#lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("lmtailor.lang", lang); applyWords(); route(); };
  $("#key-button").onclick = () => $("#key-dialog").showModal();
  $("#key-dialog").addEventListener("close", () => {
    if ($("#key-dialog").returnValue === "ok") { localStorage.setItem("lmtailor.key", $("#key-input").value.trim()); route(); }
  });
  $("#banner").onclick = () => { $("#banner").hidden = true; };
  $("#merge-go").onclick = (e) => busy(e.target, merge);
  $("#data-upload-go").onclick = (e) => busy(e.target, upload);
  $("#data-inspect").onclick = (e) => busy(e.target, inspect);
  $("#data-clean").onclick = (e) => busy(e.target, clean);
  $("#data-split").onclick = (e) => busy(e.target, split);
  $("#synth-go").onclick = (e) => busy(e.target, synth);
  for (const id of ["#train-model", "#train-strategy", "#train-batch", "#train-maxlen", "#train-rank"]) $(id).addEventListener("change", estimate);
  $("#train-go").onclick = (e) => busy(e.target, launch);
  $("#train-more-add").onclick = addMoreFile;
  $("#mon-pause").onclick = (e) => busy(e.target, () => jobAction("pause"));
  $("#mon-resume").onclick = (e) => busy(e.target, () => jobAction("resume"));
  $("#mon-cancel").onclick = (e) => busy(e.target, () => jobAction("cancel"));
  $("#eval-go").onclick = (e) => busy(e.target, runEval);
  $("#eval-filter").onchange = drawExamples;
  $("#chat-form").onsubmit = send;
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); } });
  $("#chat-stop").onclick = () => chat.controller?.abort();
  $("#chat-clear").onclick = () => { chat.controller?.abort(); chat.messages = []; $("#chat-log").replaceChildren(); };
  $("#arena-form").onsubmit = (e) => busy($("#arena-go"), () => ask(e));
  $("#arena-b").addEventListener("change", () => { $("#arena-b").dataset.touched = "1"; });
  for (const b of $$("#arena-vote button")) b.onclick = (e) => busy(e.target, () => vote(b.dataset.vote));
  window.addEventListener("hashchange", route);
  route();
}
start();
