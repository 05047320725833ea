// The page of `smallvision serve`: choose, drop or paste images; each is sent to /predict and /gradcam of
// the chosen model, and answered with its top classes as bars and its Grad-CAM picture. Text from the
// server or from file names is only ever set as text, never as HTML.
"use strict";

const state = { models: [], token: sessionStorage.getItem("smallvision-token") || "", urls: [] };
const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function say(text, bad) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", Boolean(bad));
}

// fetch with the token (when the server asked for one); a 401 shows the token form.
async function call(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("token").focus();
  }
  return response;
}

async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (err) {
    return response.status + " " + response.statusText;
  }
}

function chosenModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

async function loadModels() {
  const response = await call("/models");
  if (!response.ok) {
    say("Cannot list the models: " + (await detail(response)), true);
    $("card").textContent = "";
    return;
  }
  const body = await response.json();
  state.models = body.models;
  const select = $("model");
  select.textContent = "";
  for (const model of state.models) {
    const option = element("option", "", model.name);
    option.value = model.name;
    select.append(option);
  }
  select.value = body.default;
  $("picker").hidden = state.models.length < 2;
  $("single-model").hidden = state.models.length >= 2;
  $("single-model").textContent = "Model: " + body.default;
  showCard(chosenModel());
  say("");
}

function row(list, term, value, big) {
  if (value === null || value === undefined || value === "") return;
  list.append(element("dt", "", term));
  const dd = element("dd", big ? "big" : "");
  if (value instanceof Node) dd.append(value); else dd.textContent = value;
  list.append(dd);
}

function countsTable(counts, classes) {
  const splits = Object.keys(counts);
  const scroll = element("div", "scroll");
  const table = element("table");
  const head = element("tr");
  head.append(element("th", "", "class"));
  for (const split of splits) head.append(element("th", "", split));
  table.append(head);
  const shown = classes.length > 20 ? [] : classes;  // many classes: the totals only
  for (const name of shown) {
    const tr = element("tr");
    tr.append(element("td", "", name));
    for (const split of splits) tr.append(element("td", "", String(counts[split].per_class[name] ?? 0)));
    table.append(tr);
  }
  const total = element("tr");
  total.append(element("td", "", "all"));
  for (const split of splits) total.append(element("td", "", counts[split].total.toLocaleString("en")));
  table.append(total);
  scroll.append(table);
  return scroll;
}

function showCard(model) {
  const card = $("card");
  card.textContent = "";
  if (!model) return;
  const list = element("dl");
  row(list, "model", model.name);
  row(list, "test accuracy", model.test_accuracy === null ? "—" : model.test_accuracy.toFixed(4), true);
  if (model.val_accuracy !== null) row(list, "validation accuracy", model.val_accuracy.toFixed(4));
  const classes = model.classes.length > 20
    ? model.classes.length + " classes: " + model.classes.slice(0, 20).join(", ") + ", …"
    : model.classes.join(", ");
  row(list, "classes", classes);
  if (model.recipe.name) {
    const recipe = element("span");
    recipe.append(element("strong", "", model.recipe.name));
    const words = model.recipe.description || model.recipe.summary;
    if (words) recipe.append(document.createTextNode(": " + words));
    row(list, "recipe", recipe);
  }
  // An exported file's card may lack what its metadata did not keep (the parameters, in older exports).
  row(list, "network", (model.model || "—") + (model.backbone && model.backbone !== model.model ? " (" + model.backbone + ")" : "") +
      (model.parameters === null ? "" : ", " + model.parameters.toLocaleString("en") + " parameters") + ", input " +
      model.input_shape[1] + "×" + model.input_shape[2] + "×" + model.input_shape[0]);
  if (model.epochs !== null) {
    row(list, "epochs", model.epochs + (model.fine_tune_epochs ? " + " + model.fine_tune_epochs + " fine-tuning" : ""));
  }
  const data = model.training_data;
  if (data.source) row(list, "trained on", data.source);
  if (data.counts && Object.keys(data.counts).length) row(list, "images per split", countsTable(data.counts, model.classes));
  if (model.imported_from) row(list, "imported from", model.imported_from);
  if (model.exported_file) row(list, "served from", model.exported_file + " (ONNX, without Grad-CAM)");
  row(list, "trained", model.trained ? model.trained.replace("T", " ") : "—");
  card.append(list);
}

function showHeat(item) {
  const photo = item.querySelector(".photo");
  const heat = item.querySelector(".heat");
  const on = $("overlay").checked && heat.dataset.ready === "yes";
  heat.hidden = !on;
  photo.hidden = on;
}

function bars(prediction) {
  const list = element("ol", "bars");
  for (const [name, p] of prediction.top) {
    const li = element("li");
    li.append(element("span", "name", name));
    const bar = element("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span", "fill");
    fill.style.width = Math.max(0, Math.min(100, 100 * p)).toFixed(1) + "%";
    bar.append(fill);
    li.append(bar, element("span", "pct", percent(p)));
    list.append(li);
  }
  return list;
}

async function classify(file) {
  const model = chosenModel();
  const item = element("li", "result");
  const figure = element("figure");
  const frame = element("div", "frame");
  const url = URL.createObjectURL(file);
  state.urls.push(url);
  const photo = element("img", "photo");
  photo.src = url;
  photo.alt = file.name || "pasted image";
  const heat = element("img", "heat");
  heat.hidden = true;
  frame.append(photo, heat);
  figure.append(frame, element("figcaption", "", (file.name || "pasted image") + " · " + model.name));
  const answer = element("div", "answer");
  answer.append(element("p", "label muted", "Classifying…"));
  item.append(figure, answer);
  $("results").prepend(item);

  const form = new FormData();
  form.append("files", file, file.name || "pasted.png");
  const query = "?model=" + encodeURIComponent(model.name);
  let response;
  try {
    response = await call("/predict" + query + "&top=" + Math.min(5, model.classes.length), { method: "POST", body: form });
  } catch (err) {
    answer.textContent = "";
    answer.append(element("p", "error", "The server did not answer: " + err));
    return;
  }
  answer.textContent = "";
  if (!response.ok) {
    answer.append(element("p", "error", await detail(response)));
    return;
  }
  const prediction = (await response.json()).predictions[0];
  const label = element("p", "label");
  if (prediction.unknown) {  // "none of these": unlike every class the run trained on; what it would have said, small
    label.append(element("strong", "", "None of these"));
    answer.append(label, element("p", "would-be muted",
      "unlike the training photos (score " + prediction.unknown_score.toFixed(3) + "); it would have said " +
      prediction.label + " " + percent(prediction.probability)));
  } else {
    label.append(element("strong", "", prediction.label), document.createTextNode(" " + percent(prediction.probability)));
    answer.append(label);
  }
  answer.append(bars(prediction));

  if (model.exported_file) return;  // an exported graph has no layers for Grad-CAM to look inside: not asked
  const note = element("p", "heat-note", "Grad-CAM: computing…");
  answer.append(note);
  const cam = await call("/gradcam" + query, { method: "POST", body: file,
                                               headers: { "Content-Type": file.type || "application/octet-stream" } });
  if (!cam.ok) {
    note.textContent = "Grad-CAM: " + (await detail(cam));
    return;
  }
  const heatUrl = URL.createObjectURL(await cam.blob());
  state.urls.push(heatUrl);
  const explained = decodeURIComponent(cam.headers.get("X-Explained") || "");
  heat.alt = "Grad-CAM heatmap for " + explained + " over " + photo.alt;
  heat.onload = () => { heat.dataset.ready = "yes"; showHeat(item); };
  heat.src = heatUrl;
  note.textContent = "Grad-CAM for " + explained + " at layer " + decodeURIComponent(cam.headers.get("X-Layer") || "") +
    " (red: most evidence).";
}

function take(files) {
  const images = [...files].filter((f) => !f.type || f.type.startsWith("image/"));
  if (!images.length) {
    say("No image among those files.", true);
    return;
  }
  say(images.length === 1 ? "" : images.length + " images sent.");
  for (const file of images) classify(file);
}

// The camera: the browser asks the person first, and offers it only to a page at 127.0.0.1/localhost or
// over HTTPS (a "secure context"); the photo is a frame of the video, sent as a JPEG like a chosen file.
async function openCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say("The browser offers the camera only to a page at 127.0.0.1 or localhost, or over HTTPS: open it there.", true);
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    say("No camera: " + (err.name === "NotAllowedError" ? "the browser was not allowed to use it" : err.message), true);
    return;
  }
  $("video").srcObject = state.stream;
  $("camera-box").hidden = false;
  say("");
}

function closeCamera() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  $("video").srcObject = null;
  $("camera-box").hidden = true;
}

function snap() {
  const video = $("video");
  if (!state.stream || !video.videoWidth) { say("The camera has no picture yet.", true); return; }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  state.snaps = (state.snaps || 0) + 1;
  canvas.toBlob((blob) => classify(new File([blob], "camera-" + state.snaps + ".jpg", { type: "image/jpeg" })),
                "image/jpeg", 0.92);
}

function setUp() {
  $("camera").addEventListener("click", openCamera);
  $("snap").addEventListener("click", snap);
  $("camera-off").addEventListener("click", closeCamera);
  $("files").addEventListener("change", (event) => {
    take(event.target.files);
    event.target.value = "";  // the same file chosen again is sent again
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    take(event.dataTransfer.files);
  });
  // A file dropped beside the drop zone would otherwise make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) take(files);
  });
  $("overlay").addEventListener("change", () => document.querySelectorAll(".result").forEach(showHeat));
  $("model").addEventListener("change", () => showCard(chosenModel()));
  $("clear").addEventListener("click", () => {
    $("results").textContent = "";
    state.urls.forEach((url) => URL.revokeObjectURL(url));
    state.urls = [];
    say("");
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("smallvision-token", state.token);
    $("token-form").hidden = true;
    loadModels();
  });
  loadModels();
}

setUp();
