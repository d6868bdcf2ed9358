// Reach web page: predictions as you type, coloured by gradient influence, the cache's pointer boxed. No external code.
"use strict";

const $ = (id) => document.getElementById(id);
const DECADES = 4;
let latest = null;      // the last response shown
let selected = 0;       // index of the chosen prediction
let pending = null;     // debounce timer
let sequence = 0;       // drop answers to outdated predictions
let continuing = 0;     // drop words of an outdated continuation

function level(score, top) {
  if (!(top > 0) || !(score > 0)) return 0;
  return Math.min(1, Math.max(0, 1 + Math.log10(score / top) / DECADES));
}

function setStatus(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

// The API key, when the server asks for one (401): kept for this tab only (sessionStorage), sent as a Bearer token.
function requestHeaders(json) {
  const headers = json ? { "Content-Type": "application/json" } : {};
  const key = $("apikey").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function askForKey(body) {
  $("keybox").hidden = false;
  $("apikey").focus();
  setStatus(`${body.error.code}: ${body.error.message}`, true);
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: requestHeaders(false) });
  const body = await response.json();
  if (response.status === 401) { askForKey(body); return false; }
  if (!response.ok) throw new Error(`${body.error.code}: ${body.error.message}`);
  const select = $("model");
  select.innerHTML = "";
  for (const card of body.models) {
    const option = document.createElement("option");
    option.value = card.name;
    option.textContent = `${card.name} (${card.cell}, ${card.tokenizer.kind})`;
    select.appendChild(option);
  }
  $("cards").textContent = body.models.map((c) => {
    const test = (c.heldout && c.heldout.test) || {};
    const bpc = test.bpc != null ? `${test.bpc.toFixed(3)} bpc` : "bpc n/a";
    const ppl = test.word_ppl != null ? `per-word perplexity ${test.word_ppl.toFixed(1)}` : "";
    return `${c.name}: ${c.cell}, ${c.layers}×${c.hidden_dim}, ${c.parameters.toLocaleString()} parameters, ${bpc} ${ppl}`;
  }).join(" · ");
  return true;
}

function schedule() {
  clearTimeout(pending);
  pending = setTimeout(predict, 250);
}

async function predict() {
  const text = $("text").value;
  const mine = ++sequence;
  setStatus("predicting…");
  try {
    const response = await fetch("/v1/predict", {
      method: "POST",
      headers: requestHeaders(true),
      body: JSON.stringify({ text, k: Number($("k").value), model: $("model").value || null,
                             attribution: "full", method: $("method").value, foil: $("foil").value.trim() || null }),
    });
    const body = await response.json();
    if (mine !== sequence) return;
    if (response.status === 401) { askForKey(body); return; }
    if (!response.ok) {
      setStatus(`${body.error.code}: ${body.error.message}`, true);
      return;
    }
    latest = body;
    selected = 0;
    setStatus(`${body.context.tokens} units read` +
              (body.context.truncated ? ` (the first ${body.context.dropped_chars} characters were not read)` : ""));
    render();
  } catch (error) {
    if (mine === sequence) setStatus(`request failed: ${error}`, true);
  }
}

// Read a server-sent event stream: call onEvent with each `data:` JSON object as it arrives, until [DONE].
// Returns false when stopped early (onEvent returned false).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      if (onEvent(JSON.parse(data)) === false) {
        reader.cancel();
        return false;
      }
    }
  }
}

async function continueText() {
  const text = $("text").value;
  const mine = ++continuing;
  // Stale once a newer continuation starts or the text changes; a prediction for the same text is no reason to stop.
  const stale = () => mine !== continuing || $("text").value !== text;
  $("continue").disabled = true;
  setStatus("continuing…");
  const shown = $("continuation");
  shown.innerHTML = "";
  shown.title = "";
  try {
    // Streamed: each word is shown as soon as the server has sampled it (server-sent events, docs/API.md).
    const response = await fetch("/v1/generate", {
      method: "POST",
      headers: requestHeaders(true),
      body: JSON.stringify({ text, max_words: Number($("words").value), temperature: Number($("temperature").value),
                             model: $("model").value || null, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json();
      if (response.status === 401) askForKey(body);
      else if (!stale()) setStatus(`${body.error.code}: ${body.error.message}`, true);
      return;
    }
    let start = null, end = null, failure = null;
    const finished = await readEvents(response, (event) => {
      if (stale()) return false;
      if (event.error) {
        failure = event.error;
      } else if (event.event === "start") {
        start = event;
      } else if (event.event === "word") {
        // A generated word after the (normalised) text, with its exact probability where it was sampled.
        const span = document.createElement("span");
        span.className = "generated";
        span.textContent = event.text;
        span.title = `${event.word}: ${(100 * event.probability).toFixed(2)}%`;
        shown.appendChild(span);
        setStatus(`continuing… ${event.index + 1} word${event.index ? "s" : ""}`);
      } else if (event.event === "end") {
        end = event;
      }
      return true;
    });
    if (!finished || stale()) return;
    if (failure) {
      setStatus(`${failure.code}: ${failure.message}`, true);
      return;
    }
    if (!start || !end) {
      setStatus("the continuation stopped before its end", true);
      return;
    }
    shown.title = `seed ${start.seed}; stopped: ${end.stopped}`;
    $("text").value = start.text + end.continuation;
    predict();
  } catch (error) {
    if (!stale()) setStatus(`request failed: ${error}`, true);
  } finally {
    $("continue").disabled = false;
  }
}

function render() {
  const body = latest;
  $("mode").textContent = body.completing ? `completing “${body.partial}”` : "";
  const list = $("predictions");
  list.innerHTML = "";
  body.predictions.forEach((p, index) => {
    const item = document.createElement("li");
    item.dataset.index = index;
    item.className = index === selected ? "selected" : "";
    item.innerHTML = `<span class="w"></span><span class="p">${(100 * p.probability).toFixed(1)}% · reach ${p.reach.words} words</span>`;
    item.querySelector(".w").textContent = p.word;
    item.addEventListener("click", () => { selected = index; render(); });
    item.addEventListener("dblclick", () => insert(p));
    list.appendChild(item);
  });
  renderHeatmap();
}

function insert(prediction) {
  const box = $("text");
  box.value += prediction.remainder + " ";
  schedule();
}

function renderHeatmap() {
  const body = latest;
  const heatmap = $("heatmap");
  heatmap.innerHTML = "";
  const p = body.predictions[selected];
  if (!p) { $("chosen").textContent = "…"; $("reach").textContent = ""; $("pointer").textContent = ""; drawProfile([]); return; }
  $("chosen").textContent = `“${p.word}”`;
  const r = p.reach;
  $("reach").textContent = `reach ${r.tokens} units / ${r.words} words / ${r.chars} characters (threshold ${r.threshold}); ` +
    `90% of influence within ${r.mass90_words} words, 99% within ${r.mass99_words}`;
  const pointer = p.pointer;
  const copyPercent = pointer ? 100 * pointer.copy_probability : 0;
  $("pointer").textContent = !pointer ? "no continuous cache: predictions and influence are the model's alone"
    : pointer.entries === 0 ? "the cache copies none of this word's units from the text"
    : `the cache copied part of this word with probability ${copyPercent < 0.01 ? "under 0.01" : copyPercent.toPrecision(2)}%, ` +
      `from ${pointer.entries} places in the text; pointer reach ${pointer.reach.tokens} units / ` +
      `${pointer.reach.words} words; cutting the text beyond ${pointer.deletion_reach["99"].words} words changes ` +
      `the cache's part by under 1%`;
  const positions = (pointer && pointer.positions) || [];
  const pointedAt = (u) => positions.find((q) => q.start <= u.start && u.end <= q.end);
  // Offsets index into the whole text; an input limit may have left its first dropped_chars characters unread.
  const unread = body.context.dropped_chars || 0;
  const text = body.text.slice(0, unread + body.context.chars);
  // The view: per unit, or each unit's influence summed over its word or its sentence (offsets index the same text).
  const view = $("view").value;
  const units = (view === "words" ? p.word_influence : view === "sentences" ? p.sentence_influence : p.influence) || [];
  const top = Math.max(0, ...units.map((u) => u.score));
  const reachUnit = view === "units" && r.tokens ? units.length - r.tokens : view === "words" && r.words ? units.length - r.words : -1;
  describeCost(body.attribution, p);
  if (unread > 0) {
    const skipped = document.createElement("span");
    skipped.className = "unread";
    skipped.textContent = text.slice(0, unread);
    skipped.title = `not read: the model reads the last ${body.context.tokens} units`;
    heatmap.appendChild(skipped);
  }
  let cursor = unread;
  units.forEach((u, index) => {
    if (u.start > cursor) heatmap.appendChild(document.createTextNode(text.slice(cursor, u.start)));
    if (index === reachUnit) {
      const mark = document.createElement("span");
      mark.className = "reach";
      mark.textContent = "|";
      mark.title = "threshold reach";
      heatmap.appendChild(mark);
    }
    const span = document.createElement("span");
    span.className = "unit";
    span.textContent = text.slice(u.start, u.end);
    span.style.background = `rgba(214, 39, 40, ${level(u.score, top).toFixed(3)})`;
    span.title = u.score.toExponential(2);
    const copied = pointedAt(u);
    if (copied) {
      span.classList.add("pointer");  // one box around each copied unit: its first and last units close it
      if (u.start <= copied.start) span.classList.add("pointer-first");
      if (u.end >= copied.end) span.classList.add("pointer-last");
      span.title += ` · cache pointer: ${(100 * copied.share).toFixed(1)}% of the copies`;
    }
    heatmap.appendChild(span);
    cursor = Math.max(cursor, u.end);
  });
  heatmap.appendChild(document.createTextNode(text.slice(cursor)));
  drawProfile(p.profile || []);
}

function describeCost(info, p) {
  // What the method cost against the prediction, the foil's probability, and the method's own figures.
  if (!info) { $("cost").textContent = ""; return; }
  const parts = [`${info.method}: ${info.cost.method_ms.toFixed(0)} ms, ` +
                 `${info.cost.ratio === null ? "–" : info.cost.ratio.toFixed(1)}× the prediction's ${info.cost.prediction_ms.toFixed(0)} ms`];
  if (info.foil) parts.push(info.foil.logprob === null ? `“${info.foil.word}” has probability 0 here: no contrast`
                                                       : `against “${info.foil.word}” (p = ${Math.exp(info.foil.logprob).toPrecision(2)})`);
  if (p.occlusion_reach) parts.push(`replacing the text beyond ${p.occlusion_reach.words} words moves log P by under ${p.occlusion_reach.tolerance} nats`);
  if (p.completeness) parts.push(`completeness gap ${p.completeness.gap.toExponential(1)} nats`);
  $("cost").textContent = parts.join(" · ");
}

function drawProfile(profile) {
  const canvas = $("profile");
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 44, bottom = 22, top = 8, right = 8;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#ccc";
  g.strokeRect(left, top, w - left - right, h - top - bottom);
  const points = profile.map((v, i) => [i + 1, v]).filter(([, v]) => v > 0);
  g.fillStyle = "#666";
  g.font = "10px sans-serif";
  if (!points.length) return;
  const far = Math.max(...points.map(([d]) => d));
  const low = Math.max(Math.min(...points.map(([, v]) => v)), 1e-8);
  const span = Math.max(Math.log10(1 / low), 1e-9);
  const x = (d) => left + (w - left - right) * (far > 1 ? Math.log10(d) / Math.log10(far) : 0);
  const y = (v) => top + (h - top - bottom) * (-Math.log10(v) / span);
  g.fillText("1", 4, top + 8);
  g.fillText(low.toExponential(0), 4, h - bottom);
  for (let power = 0; 10 ** power <= far; power++) g.fillText(String(10 ** power), x(10 ** power) - 4, h - 6);
  g.strokeStyle = "#d62728";
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach(([d, v], i) => (i ? g.lineTo(x(d), y(v)) : g.moveTo(x(d), y(v))));
  g.stroke();
}

$("text").addEventListener("input", schedule);
$("continue").addEventListener("click", continueText);
for (const id of ["model", "k", "method"]) $(id).addEventListener("change", predict);
$("foil").addEventListener("input", schedule);
$("view").addEventListener("change", () => { if (latest) renderHeatmap(); });
// The method menu offers what the server registers (its request schema's enum), in the registry's order.
fetch("/openapi.json").then((response) => response.json()).then((document) => {
  const request = Object.entries(document.components.schemas).find(([name]) => name.startsWith("PredictRequest"));
  const methods = request ? request[1].properties.method.enum : [];
  const menu = $("method");
  const chosen = menu.value;
  const labels = Object.fromEntries([...menu.options].map((o) => [o.value, o.textContent]));
  if (methods.length) menu.innerHTML = methods.map((m) => `<option value="${m}">${labels[m] || m.replace(/_/g, " ")}</option>`).join("");
  if (methods.includes(chosen)) menu.value = chosen;
}).catch(() => {});
function start() {
  loadModels().then((loaded) => { if (loaded) predict(); })
    .catch((error) => setStatus(`could not load models: ${error}`, true));
}
$("apikey").value = sessionStorage.getItem("reach-api-key") || "";
if ($("apikey").value) $("keybox").hidden = false;
$("apikey").addEventListener("change", () => {
  sessionStorage.setItem("reach-api-key", $("apikey").value.trim());
  start();
});
start();
