// cxrkit serve: the web page. No build step, no dependencies; talks to /v1/* on this server.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cxrkit-serve-token";
const state = { file: null, result: null, heatmaps: {}, selected: null };

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), ...authHeaders() },
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) {
    let reason = body && body.detail ? body.detail : response.statusText;
    if (typeof reason !== "string") reason = JSON.stringify(reason);
    const retry = response.headers.get("Retry-After");
    const error = new Error(`${response.status}: ${reason}${retry ? ` (retry in ${retry} s)` : ""}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

async function loadCard() {
  const box = $("card");
  try {
    const card = await api("v1/model");
    $("token-box").hidden = true;
    const thresholds = card.thresholds || {};
    const calibration = card.calibration ? card.calibration.method || "yes" : "none";
    const auroc = (card.val_metrics && card.val_metrics.auroc) || {};
    const dl = el("dl", {}, [
      el("dt", { textContent: "Network" }),
      el("dd", { textContent: `${card.backbone}, ${card.input_size} px input` }),
      el("dt", { textContent: "Thresholds" }),
      el("dd", {
        textContent: thresholds.method
          ? `${thresholds.method}, tuned on the ${thresholds.split || "validation"} split`
          : "none tuned: 0.5 for every finding",
      }),
      el("dt", { textContent: "Calibration" }),
      el("dd", { textContent: calibration }),
      el("dt", { textContent: "Validation macro AUROC" }),
      el("dd", { textContent: fmt(card.val_metrics && card.val_metrics.macro_auroc) }),
      el("dt", { textContent: "Input gate" }),
      el("dd", {
        textContent: card.input_gate
          ? `flags images unlike the training data (threshold ${fmt(card.input_gate.threshold, 1)}, ` +
            (card.input_gate.confidence
              ? `at most ${fmt(100 * card.input_gate.false_alarm_rate, 0)}% false alarms, ` +
                `${fmt(100 * card.input_gate.confidence, 0)}% confidence)`
              : `${fmt(100 * card.input_gate.false_alarm_rate, 0)}% false alarms on validation)`)
          : "none fitted: images unlike the training data are not flagged",
      }),
      el("dt", { textContent: "Model version" }),
      el("dd", { textContent: `cxrkit ${card.cxrkit_version} (server ${card.server.cxrkit_version})` }),
    ]);
    const rows = card.findings.map((f) =>
      el("tr", {}, [
        el("td", { textContent: f }),
        el("td", { className: "num", textContent: fmt(card.thresholds_applied[f], 2) }),
        el("td", { className: "num", textContent: fmt(auroc[f]) }),
      ]),
    );
    const table = el("table", { id: "card-findings" }, [
      el("thead", {}, [
        el("tr", {}, [
          el("th", { textContent: "Finding" }),
          el("th", { className: "num", textContent: "Threshold" }),
          el("th", { className: "num", textContent: "Val AUROC" }),
        ]),
      ]),
      el("tbody", {}, rows),
    ]);
    box.replaceChildren(dl, table);
  } catch (err) {
    box.replaceChildren(el("p", { className: "hint", textContent: `Model card: ${err.message}` }));
  }
}

async function loadCardText() {
  const response = await fetch("v1/model/card.md", { headers: authHeaders() });
  $("card-md-text").textContent = response.ok
    ? await response.text()
    : `MODEL_CARD.md: ${response.status} ${response.statusText}`;
}

function describeDrift(drift) {
  if (!drift.psi) return `drift: n/a (${drift.unavailable})`;
  const worst = Object.entries(drift.psi).sort((a, b) => b[1] - a[1])[0];
  if (!worst) return "drift: n/a (no finding has a reference)";
  return `drift: ${drift.reading[worst[0]]} (largest PSI ${fmt(worst[1], 2)}, ${worst[0]})`;
}

async function loadMonitor() {
  try {
    const m = await api("v1/monitor");
    const ood = m.ood_rate === null ? m.input_gate : `${fmt(100 * m.ood_rate, 0)}% flagged`;
    $("monitor").textContent =
      `Last ${m.window.images} of ${m.images_since_start} image(s) since start: ${ood}; ` +
      describeDrift(m.drift) + ".";
  } catch (err) {
    $("monitor").textContent = `Monitor: ${err.message}`;
  }
}

async function predict(file, cam) {
  const form = new FormData();
  form.append("file", file);
  const query = cam ? `?cam=${encodeURIComponent(cam)}` : "?cam=true&image=true";
  return api(`v1/predict${query}`, { method: "POST", body: form });
}

async function analyse(file) {
  state.file = file;
  state.heatmaps = {};
  state.selected = null;
  setStatus("Analysing…");
  $("findings").hidden = true;
  $("gate-warning").hidden = true;
  $("gate-note").hidden = true;
  $("positives").textContent = "";
  try {
    const result = await predict(file, null);
    state.result = result;
    Object.assign(state.heatmaps, result.heatmaps || {});
    await showImage(result);
    renderGate(result);
    renderFindings(result);
    const info = result.image_info;
    $("image-info").textContent =
      `${info.format}, ${info.width}×${info.height} px, ${info.bits_stored}-bit` +
      (info.format === "DICOM" ? "; shown with the windowing the model sees" : "");
    setStatus(result.calibrated ? "Done (calibrated probabilities)." : "Done.");
    loadMonitor();
  } catch (err) {
    setStatus(`Could not analyse this file: ${err.message}`, true);
    $("viewer").hidden = true;
    $("no-result").hidden = false;
  }
}

function showImage(result) {
  return new Promise((resolve) => {
    const img = $("xray");
    img.onload = () => resolve();
    img.src = `data:image/png;base64,${result.image}`;
    $("viewer").hidden = false;
    $("overlay").hidden = true;
    $("opacity-box").hidden = true;
    $("colorbar").hidden = true;
    $("overlay-label").textContent = "Click a finding to overlay its heatmap.";
  });
}

// The input gate's verdict, shown above the findings: a warning when the image is flagged.
function renderGate(result) {
  const gate = result.input_gate;
  if (!gate) {
    $("gate-note").textContent = (result.warnings || ["no input gate"]).join("; ");
    $("gate-note").hidden = false;
    return;
  }
  if (!gate.in_distribution) {
    $("gate-reasons").textContent = `Why: ${gate.reasons.join("; ")}.`;
    $("gate-warning").hidden = false;
  }
}

function renderFindings(result) {
  const rows = [...result.findings].sort((a, b) => b.probability - a.probability);
  const tbody = $("findings").querySelector("tbody");
  tbody.replaceChildren(
    ...rows.map((f) => {
      const bar = el("div", { className: "bar", title: `threshold ${fmt(f.threshold, 2)}` }, [
        el("div", { className: "fill" }),
        el("div", { className: "thr" }),
      ]);
      bar.firstChild.style.width = `${(100 * f.probability).toFixed(1)}%`;
      bar.lastChild.style.left = `calc(${(100 * f.threshold).toFixed(1)}% - 1px)`;
      const tr = el("tr", { className: f.call ? "positive" : "", tabIndex: 0 }, [
        el("td", { textContent: f.finding }),
        el("td", {}, [bar]),
        el("td", { className: "num", textContent: fmt(f.probability) }),
        el("td", {}, [
          el("span", {
            className: `call ${f.call ? "yes" : "no"}`,
            textContent: f.call ? "positive" : "—",
          }),
        ]),
      ]);
      tr.dataset.finding = f.finding;
      tr.addEventListener("click", () => selectFinding(f.finding));
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") selectFinding(f.finding);
      });
      return tr;
    }),
  );
  $("findings").hidden = false;
  $("no-result").hidden = true;
  $("positives").textContent = result.positive.length
    ? `Positive at the model's thresholds: ${result.positive.join(", ")}`
    : "No finding above its threshold.";
}

async function selectFinding(name) {
  state.selected = name;
  for (const tr of $("findings").querySelectorAll("tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.finding === name);
  }
  if (!state.heatmaps[name]) {
    setStatus(`Computing the heatmap of ${name}…`);
    try {
      const result = await predict(state.file, name);
      Object.assign(state.heatmaps, result.heatmaps);
      setStatus("Done.");
    } catch (err) {
      setStatus(`Heatmap failed: ${err.message}`, true);
      return;
    }
  }
  if (state.selected === name) await drawHeatmap(name);
}

// OpenCV's COLORMAP_JET, as cxrkit cam draws it: 0 blue, 0.5 green/yellow, 1 red.
function jet(v) {
  const c = (x) => Math.max(0, Math.min(1, x)) * 255;
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

function drawHeatmap(name) {
  return new Promise((resolve) => {
    const source = new Image();
    source.onload = () => {
      const canvas = $("overlay");
      canvas.width = source.width;
      canvas.height = source.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(source, 0, 0);
      const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const d = pixels.data;
      let peak = 0;
      for (let i = 0; i < d.length; i += 4) {
        peak = Math.max(peak, d[i]);
        const [r, g, b] = jet(d[i] / 255);
        d[i] = r;
        d[i + 1] = g;
        d[i + 2] = b;
        d[i + 3] = 255;
      }
      ctx.putImageData(pixels, 0, 0);
      canvas.style.opacity = $("opacity").value / 100;
      canvas.hidden = false;
      canvas.dataset.finding = name;
      $("opacity-box").hidden = false;
      $("colorbar").hidden = false;
      const f = state.result.findings.find((x) => x.finding === name);
      $("overlay-label").textContent =
        `Heatmap: ${name} (p = ${fmt(f.probability)}, Grad-CAM)` +
        (peak === 0 ? ": empty, no region raises this finding's score" : "");
      resolve();
    };
    source.src = `data:image/png;base64,${state.heatmaps[name]}`;
  });
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) analyse(e.target.files[0]);
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", (e) => {
    $("overlay").style.opacity = e.target.value / 100;
    $("opacity-value").textContent = `${e.target.value}%`;
  });
  $("token-box").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadCard();
    loadCardText();
    loadMonitor();
  });
  loadCard();
  loadCardText();
  loadMonitor();
}

document.addEventListener("DOMContentLoaded", setup);
