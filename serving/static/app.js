// The dfcompress page: jobs, one job's progress and report, and the served model. Plain DOM, no build step.
// Everything that came from a user or a run (names, file names, class names, notes, errors) goes in with
// textContent through el(), never as HTML.
"use strict";

const TOKEN_KEY = "dfcompress-token";
const view = document.getElementById("view");
let stopTimers = []; // what the current view polls; cleared when the view changes

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = Object.assign({}, opts.headers || {});
  if (token()) opts.headers.Authorization = `Bearer ${token()}`;
  let response;
  try {
    response = await fetch(path, opts);
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

function every(ms, fn) {
  let live = true;
  let timer = null;
  const tick = async () => {
    if (!live) return;
    try { await fn(); } catch (err) { console.warn(err); }
    if (live) timer = setTimeout(tick, ms);
  };
  tick();
  stopTimers.push(() => { live = false; clearTimeout(timer); });
}

const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)} %`);
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const thousands = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));

function notice(kind, ...text) { return el("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...text); }

function needToken() {
  return el("div", { class: "notice warn", id: "token-needed" },
    "This page needs the server's bearer token to show compression jobs: ",
    el("button", { type: "button", onclick: openTokenDialog }, "enter the token"),
    ". The model can be tried without it.");
}

function jobTitle(job) {
  return (job.options && job.options.name) || job.teacher || job.job_id.slice(0, 8);
}

// ------------------------------------------------------------------ token

const dialog = document.getElementById("token-dialog");
const tokenInput = document.getElementById("token-input");

function openTokenDialog() { tokenInput.value = token(); dialog.showModal(); tokenInput.focus(); }

function showTokenState() {
  document.getElementById("token-button").textContent = token() ? "Token set" : "Set token";
}

document.getElementById("token-button").addEventListener("click", openTokenDialog);
document.getElementById("token-form").addEventListener("submit", () => {
  const value = tokenInput.value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  dialog.close();
  showTokenState();
  route();
});

// ------------------------------------------------------------------ jobs

// The choices a submission accepts, read from the API's own schema (/docs.json), which takes them from the
// compressor's registries: a method or dataset added there appears here without a change to this page.
let jobOptionsSchema = null;
function jobOptionProperties() {
  jobOptionsSchema = jobOptionsSchema || apiJson("/docs.json").then((spec) => spec.components.schemas.JobOptions.properties);
  return jobOptionsSchema;
}

function optionSelect(field, emptyLabel) {
  const select = el("select", { name: field }, emptyLabel ? el("option", { value: "" }, emptyLabel) : null);
  jobOptionProperties().then((properties) => {
    const schema = properties[field];
    const named = (schema.anyOf || [schema]).find((s) => Array.isArray(s.enum)) || { enum: [] };
    for (const name of named.enum) select.append(el("option", { value: name, selected: name === schema.default }, name));
  }).catch((err) => select.append(el("option", { value: "", disabled: true }, `choices unavailable: ${err.message}`)));
  return select;
}

function submitForm(onSubmitted) {
  const message = el("div", { id: "submit-message" });
  const form = el("form", { id: "submit-form", class: "card" },
    el("h2", {}, "New compression job"),
    el("div", { class: "grid" },
      el("label", {}, "Name", el("input", { name: "name", maxlength: 120, placeholder: "optional label" })),
      el("label", {}, "Teacher (state dict or .safetensors)", el("input", { name: "teacher", type: "file", required: true })),
      el("label", {}, "Ratio", el("input", { name: "ratio", type: "number", min: 0.01, max: 0.99, step: 0.01, value: 0.1, required: true })),
      el("label", {}, "Method", optionSelect("method")),
      el("label", {}, "Steps (rounds)", el("input", { name: "steps", type: "number", min: 1, step: 1, placeholder: "preset's" })),
      el("label", {}, "Evaluate every (rounds)", el("input", { name: "eval_every", type: "number", min: 1, step: 1, placeholder: "50" })),
      el("label", {}, "Evaluation data", optionSelect("dataset", "none (data-free selection only)"))),
    el("button", { type: "submit" }, "Submit"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const key of [...data.keys()]) {
      const v = data.get(key);
      if (typeof v === "string" && v.trim() === "") data.delete(key);
    }
    message.replaceChildren(notice("info", "uploading…"));
    try {
      const job = await apiJson("/compress/submit", { method: "POST", body: data });
      message.replaceChildren(notice("ok", "queued as ", el("a", { href: `#/job/${job.job_id}` }, job.job_id)));
      form.reset();
      onSubmitted();
    } catch (err) {
      message.replaceChildren(notice("error", `not submitted: ${err.message}`));
    }
  });
  return form;
}

function jobActions(job, refresh, withOpen = true) {
  const actions = el("span", { class: "actions" }, withOpen ? el("a", { href: `#/job/${job.job_id}` }, "open") : null);
  if (["queued", "running"].includes(job.status) && !job.cancel_requested) {
    actions.appendChild(el("button", { type: "button", class: "cancel", onclick: async () => {
      try { await api(`/compress/cancel?job_id=${job.job_id}`, { method: "POST" }); } catch (err) { alert(err.message); }
      refresh();
    } }, "cancel"));
  }
  if (job.status === "succeeded" && job.artifacts.includes("student.onnx")) {
    actions.appendChild(el("button", { type: "button", class: "serve", onclick: (e) => serveStudent(job, e.target) }, "serve this student"));
  }
  return actions;
}

async function serveStudent(job, button) {
  try {
    const info = await apiJson("/models/select", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model_id: job.job_id }),
    });
    button.textContent = `served (${info.id.slice(0, 8)})`;
    button.disabled = true;
  } catch (err) {
    alert(`could not serve it: ${err.message}`);
  }
}

function jobsTable(jobs, refresh) {
  if (jobs.length === 0) return el("p", { class: "empty" }, "No jobs yet: submit one above.");
  return el("table", { id: "jobs-table" },
    el("thead", {}, el("tr", {}, ["Name", "Status", "Teacher", "Ratio", "Method", "Step", "Best accuracy", "Created", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, jobs.map((job) => {
      const p = job.progress || {};
      const o = job.options || {};
      return el("tr", { dataset: { jobId: job.job_id, status: job.status } },
        el("td", { class: "name" }, jobTitle(job)),
        el("td", {}, el("span", { class: `status ${job.status}` }, job.status)),
        el("td", {}, job.teacher || "–"),
        el("td", {}, o.ratio !== undefined ? String(o.ratio) : "–"),
        el("td", {}, o.method || "–"),
        el("td", {}, p.total_steps ? `${p.step} / ${p.total_steps}` : String(p.step || 0)),
        el("td", {}, p.best_accuracy !== null && p.best_accuracy !== undefined ? pct(p.best_accuracy)
          : (p.best_selection_score !== null && p.best_selection_score !== undefined ? `agreement ${pct(p.best_selection_score)}` : "–")),
        el("td", {}, when(job.created)),
        el("td", {}, jobActions(job, refresh)));
    })));
}

function showJobs() {
  const list = el("div", { id: "jobs" });
  view.replaceChildren(el("h1", {}, "Compression jobs"));
  if (!token()) { view.appendChild(needToken()); return; }
  const refresh = async () => {
    try {
      const { jobs } = await apiJson("/compress/jobs");
      list.replaceChildren(jobsTable(jobs, refresh));
    } catch (err) {
      list.replaceChildren(notice("error", `cannot list jobs: ${err.message}`));
    }
  };
  view.append(submitForm(refresh), list);
  every(2000, refresh);
}

// ------------------------------------------------------------------ one job

function metricCharts(records) {
  const rounds = records.filter((r) => r && Number.isFinite(r.step));
  const lossKeys = ["s_loss", "g_bn", "g_adv", "g_balance", "g_onehot", "loss_s", "loss_g"]
    .filter((k) => rounds.some((r) => Number.isFinite(r[k])));
  const losses = lossKeys.map((k) => ({ name: k, points: rounds.filter((r) => Number.isFinite(r[k])).map((r) => [r.step, r[k]]) }));
  const evals = rounds.filter((r) => r.eval);
  const quality = [
    { name: "accuracy", points: evals.filter((r) => Number.isFinite(r.eval.accuracy)).map((r) => [r.step, r.eval.accuracy]) },
    { name: "selection score", points: evals.filter((r) => Number.isFinite(r.eval.selection_score)).map((r) => [r.step, r.eval.selection_score]) },
  ].filter((s) => s.points.length);
  return el("div", { class: "charts" },
    el("figure", { id: "loss-chart" }, lineChart(losses, { title: "losses" })),
    el("figure", { id: "accuracy-chart" }, lineChart(quality, { title: "accuracy and selection score", yMin: 0, yMax: 1, percent: true })));
}

async function blobUrl(jobId, artifact) {
  const response = await api(`/compress/get?job_id=${jobId}&artifact=${encodeURIComponent(artifact)}`);
  return URL.createObjectURL(await response.blob());
}

function imageFigure(jobId, artifact, caption, id) {
  const figure = el("figure", { id }, el("figcaption", {}, caption));
  blobUrl(jobId, artifact)
    .then((url) => figure.insertBefore(el("img", { src: url, alt: caption }), figure.firstChild))
    .catch((err) => figure.appendChild(notice("error", `${artifact}: ${err.message}`)));
  return figure;
}

function downloadButton(jobId, artifact) {
  return el("button", { type: "button", class: "download", dataset: { artifact }, onclick: async () => {
    try {
      const a = el("a", { href: await blobUrl(jobId, artifact), download: artifact });
      document.body.appendChild(a);
      a.click();
      a.remove();
    } catch (err) { alert(`${artifact}: ${err.message}`); }
  } }, artifact);
}

function reportSection(job, report) {
  const t = report.teacher || {}, s = report.student || {};
  const speed = (report.deployment && report.deployment.cpu_speed) || {};
  const speedups = speed.speedup || {};
  const sizes = el("table", { id: "size-table" },
    el("thead", {}, el("tr", {}, ["", "parameters", "MACs", "top-1 (full)", "top-1 (test 20 %)", "top-1 (test 10 %)"].map((h) => el("th", {}, h)))),
    el("tbody", {}, [["teacher", t], ["student", s]].map(([who, m]) => {
      const acc = m.accuracy || {};
      return el("tr", {}, el("th", {}, `${who} ${m.arch || ""}`), el("td", {}, thousands(m.params)), el("td", {}, thousands(m.macs)),
        el("td", {}, pct(acc.full)), el("td", {}, pct(acc.test_20)), el("td", {}, pct(acc.test_10)));
    })));
  const facts = el("ul", { class: "facts" },
    el("li", {}, `student/teacher parameters: ${pct(report.ratio)} (asked ${pct(report.requested_ratio)}), MACs ${pct(report.student_macs_ratio)}`),
    s.init ? el("li", {}, `student started from ${s.init === "teacher" ? "its teacher's strongest channels and blocks" : "random weights"}`) : null,
    Object.keys(speedups).length
      ? el("li", {}, `ONNX Runtime speed-up on ${speed.threads || "?"} CPU threads: `,
          Object.entries(speedups).map(([b, v]) => `${Number(v).toFixed(2)}× at batch ${b}`).join(", "))
      : null,
    el("li", {}, `method ${report.method}, ${report.steps} rounds, ${thousands(report.student_updates)} student updates, `,
      `${Math.round(report.wall_seconds || 0)} s on ${report.device || "?"}`),
    report.selection ? el("li", {}, `selected: step ${report.selection.best_step} by ${report.selection.criterion}`) : null);
  const history = (report.history || []);
  const curve = lineChart([
    { name: "student accuracy", points: history.filter((h) => Number.isFinite(h.accuracy)).map((h) => [h.step, h.accuracy]) },
    { name: "selection score", points: history.filter((h) => Number.isFinite(h.selection_score)).map((h) => [h.step, h.selection_score]) },
  ].filter((x) => x.points.length), { title: "accuracy curve", yMin: 0, yMax: 1, percent: true });
  const figures = report.figures || {};
  const images = el("div", { class: "figures" },
    figures.samples ? imageFigure(job.job_id, figures.samples, "generated samples (the teacher's class above each)", "samples") : null,
    ...(figures.confusion || []).map((name) => imageFigure(job.job_id, name,
      name.includes("teacher") ? "confusion matrix: teacher" : "confusion matrix: student", name.replace(".png", ""))));
  return el("section", { id: "report" },
    el("h2", {}, "Report"), sizes, facts,
    el("figure", { id: "report-curve" }, curve),
    images,
    el("h3", {}, "Downloads"),
    el("div", { class: "downloads" }, job.artifacts.filter((a) => a.endsWith(".onnx") || a.endsWith(".pt2") || a.endsWith(".json") || a.endsWith(".md"))
      .map((a) => downloadButton(job.job_id, a))));
}

function showJob(jobId) {
  view.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← all jobs")));
  if (!token()) { view.appendChild(needToken()); return; }
  const head = el("div", { id: "job-head" });
  const charts = el("div", { id: "job-charts" });
  const report = el("div", { id: "job-report" });
  view.append(head, charts, report);
  let records = [];
  let next = 0;
  let reportShown = false;
  let finished = false;

  const refresh = async () => {
    if (finished && reportShown) return;
    let job;
    try {
      job = await apiJson(`/compress/status?job_id=${encodeURIComponent(jobId)}`);
    } catch (err) {
      head.replaceChildren(notice("error", `cannot show job ${jobId}: ${err.message}`));
      return;
    }
    try {
      const page = await apiJson(`/compress/metrics?job_id=${encodeURIComponent(jobId)}&start=${next}`);
      records = records.concat(page.records);
      next = page.next;
      charts.replaceChildren(metricCharts(records));
    } catch (err) {
      charts.replaceChildren(notice("error", `metrics: ${err.message}`));
    }
    // The job row's progress is updated by the worker every few seconds; metrics.jsonl may be ahead of it.
    const p = Object.assign({}, job.progress || {});
    const lastStep = records.length ? Math.max(...records.map((r) => (r && Number.isFinite(r.step) ? r.step : 0))) : 0;
    p.step = Math.max(p.step || 0, lastStep);
    const fraction = p.total_steps ? Math.min(1, p.step / p.total_steps) : 0;
    head.replaceChildren(...[
      el("h1", { class: "name" }, jobTitle(job)),
      el("p", {}, el("span", { class: `status ${job.status}`, id: "job-status" }, job.status), " ",
        el("span", { class: "muted" }, `job ${job.job_id} · teacher ${job.teacher || "–"} · created ${when(job.created)}`)),
      el("div", { class: "progress" }, el("progress", { id: "job-progress", max: p.total_steps || 1, value: p.step || 0 }),
        el("span", { id: "job-step" }, p.total_steps ? `step ${p.step} of ${p.total_steps} (${Math.round(100 * fraction)} %)` : `step ${p.step || 0}`)),
      job.error ? notice("error", job.error) : null,
      job.notes && job.notes.length ? el("ul", { class: "notes" }, job.notes.map((n) => el("li", {}, n))) : null,
      jobActions(job, refresh, false)].filter(Boolean));
    finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    if (job.status === "succeeded" && !reportShown) {
      reportShown = true;
      try {
        const r = await apiJson(`/compress/get?job_id=${encodeURIComponent(jobId)}&artifact=report.json`);
        report.replaceChildren(reportSection(job, r));
      } catch (err) {
        reportShown = false;
        report.replaceChildren(notice("error", `report: ${err.message}`));
      }
    }
  };
  every(1500, refresh);
}

// ------------------------------------------------------------------ try the model

function showTry() {
  const model = el("div", { id: "served-model" }, "…");
  const result = el("div", { id: "predictions" });
  const preview = el("img", { id: "preview", alt: "" });
  const input = el("input", { type: "file", accept: "image/*", id: "image-input" });
  const zone = el("div", { id: "drop-zone", tabindex: 0 }, "Drop an image here, or ", el("label", { for: "image-input", class: "link" }, "choose a file"), input);
  view.replaceChildren(el("h1", {}, "Try the served model"), model, zone, el("div", { class: "try-result" }, preview, result));

  apiJson("/models").then((listing) => {
    const m = listing.served;
    model.replaceChildren(m
      ? el("p", {}, "Serving ", el("strong", {}, m.id || "a compressed student"), ` · ${thousands(m.params)} parameters`,
          m.accuracy !== null && m.accuracy !== undefined ? ` · accuracy ${pct(m.accuracy)}` : "",
          m.input_size ? ` · input ${m.channels}×${m.input_size}×${m.input_size}` : "",
          m.class_names && m.class_names.length ? ` · ${m.class_names.length} classes` : "")
      : notice("warn", "no model is served yet: select a succeeded job's student on the Jobs page"));
  }).catch((err) => model.replaceChildren(notice("error", `cannot read the served model: ${err.message}`)));

  const classify = async (file) => {
    if (!file) return;
    preview.src = URL.createObjectURL(file);
    result.replaceChildren(notice("info", "classifying…"));
    const body = new FormData();
    body.append("image", file, file.name);
    try {
      const answer = await apiJson("/classify", { method: "POST", body });
      const top = answer.predictions[0] || [];
      result.replaceChildren(
        el("p", { class: "muted" }, `model ${answer.model}, top ${top.length}`),
        el("ol", { id: "top5" }, top.map((p) => el("li", {},
          el("span", { class: "label" }, p.label),
          el("span", { class: "bar" }, el("span", { style: `width:${(100 * p.probability).toFixed(1)}%` })),
          el("span", { class: "prob" }, pct(p.probability))))));
    } catch (err) {
      result.replaceChildren(notice("error", `not classified: ${err.message}`));
    }
  };
  input.addEventListener("change", () => classify(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    classify(e.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------ router

function route() {
  stopTimers.forEach((stop) => stop());
  stopTimers = [];
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/job\/([0-9a-f]{1,64})$/);
  document.querySelectorAll("nav a[data-nav]").forEach((a) =>
    a.classList.toggle("active", a.dataset.nav === (hash.startsWith("#/try") ? "try" : "jobs")));
  if (job) showJob(job[1]);
  else if (hash.startsWith("#/try")) showTry();
  else showJobs();
}

window.addEventListener("hashchange", route);
showTokenState();
route();
