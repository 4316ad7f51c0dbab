"use strict";
// The READ page: one image + one question -> POST v1/segment (overlay=true) -> pictures.
// Only this origin is contacted (the server's Content-Security-Policy enforces it).

const $ = (id) => document.getElementById(id);
let chosenFile = null;
let pictures = { overlay: null, heatmap: null };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function chooseFile(file) {
  if (!file) return;
  chosenFile = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").textContent = file.name;
  showError("");
}

function describeModel(model) {
  return `${model.name} v${model.version}`;
}

async function loadModel() {
  try {
    const response = await fetch("v1/model");
    const body = await response.json();
    $("model-version").textContent = response.ok ? describeModel(body) : `unavailable (${body.error})`;
  } catch (error) {
    $("model-version").textContent = "unavailable";
  }
}

function showPicture() {
  const wantHeatmap = $("heatmap-toggle").checked && pictures.heatmap;
  $("overlay").src = wantHeatmap ? pictures.heatmap : pictures.overlay;
}

function showResult(body) {
  $("answer").textContent = body.answer.trim() || "(empty answer)";
  const see = body.see ? "present" : "absent";
  $("see").textContent = see;
  $("see").className = see;
  $("answer-model").textContent = describeModel(body.model);
  $("model-version").textContent = describeModel(body.model);
  pictures = { overlay: body.overlay, heatmap: body.heatmap };
  $("heatmap-toggle").disabled = !body.heatmap;
  if (!body.heatmap) $("heatmap-toggle").checked = false;
  // On a phone the result is below the form: bring it into view once its picture has a height.
  $("overlay").addEventListener("load", () => $("result").scrollIntoView({ block: "start" }),
                                { once: true });
  showPicture();
  $("result").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!chosenFile) return showError("Pick an image first.");
  if (!question) return showError("Type a question first.");
  const form = new FormData();
  form.append("image", chosenFile, chosenFile.name);
  form.append("question", question);
  if ($("prompt-mode").value) form.append("prompt_mode", $("prompt-mode").value);
  form.append("overlay", "true");
  $("submit").disabled = true;
  $("status").textContent = "Thinking...";
  showError("");
  try {
    const response = await fetch("v1/segment", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      showError(`${response.status}: ${body.error || "request failed"}`);
    } else {
      showResult(body);
    }
  } catch (error) {
    showError(`The request failed: ${error}`);
  } finally {
    $("submit").disabled = false;
    $("status").textContent = "";
  }
}

function setUp() {
  const zone = $("drop-zone");
  $("image-input").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("ask").addEventListener("submit", ask);
  $("heatmap-toggle").addEventListener("change", showPicture);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
