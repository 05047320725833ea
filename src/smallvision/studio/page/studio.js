// The studio's page: talks only to this server's /api (no CDN, no other address); draws its charts itself.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("studio-token") || "", sources: [], source: null, split: "train",
                label: null, offset: 0, limit: 60, blobs: [], watching: null, liveOffset: 0, rows: [], timer: null,
                recipes: [], previewSeed: 0, previewAsked: 0 };

window.studioRows = () => state.rows;  // the rows drawn so far (benchmarks/studio_figures.py times the chart by them)

function say(text, bad = false) { const s = $("status"); s.textContent = text; s.classList.toggle("bad", bad); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const answer = await fetch(path, Object.assign({}, options, { headers }));
  if (answer.status === 401) { $("token-form").hidden = false; $("token").focus(); throw new Error("the token, please"); }
  if (!answer.ok) {
    let detail = answer.statusText;
    try { detail = (await answer.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return answer;
}
const json = async (path, options) => (await api(path, options)).json();
function post(path, body) {
  return json(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
}

function showTab(name) {
  for (const tab of ["data", "train", "runs"]) {
    $("tab-" + tab).setAttribute("aria-selected", String(tab === name));
    $(tab).hidden = tab !== name;
  }
  if (name === "runs") loadRuns().catch((e) => say(e.message, true));
}

// ---- Data ----
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

async function loadSources() {
  state.sources = await json("/api/sources");
  const cards = $("sources");
  cards.replaceChildren();
  state.sources.forEach((source, index) => {
    const card = el("button", { class: "card", type: "button", "data-index": index });
    card.append(el("h3", {}, source.name));
    if (source.problem) card.append(el("p", { class: "problem" }, source.problem));
    else {
      const splits = Object.keys(source.counts);
      const table = el("table", {}, el("tr", {}, el("th", {}, "class"), ...splits.map((s) => el("th", {}, s))));
      for (const name of source.classes) {
        table.append(el("tr", {}, el("td", {}, name), ...splits.map((s) => el("td", {}, String(source.counts[s][name])))));
      }
      card.append(table);
      for (const warning of source.warnings) card.append(el("p", { class: "warning" }, warning));
    }
    card.addEventListener("click", () => openSource(index));
    cards.append(card);
  });
  const select = $("train-source");
  select.replaceChildren(...state.sources.filter((s) => !s.problem).map((s) =>
    el("option", { value: state.sources.indexOf(s) }, s.path ? `${state.sources.indexOf(s)}: ${s.path}` : s.name)));
  say(state.sources.length ? `${state.sources.length} source(s)` : "no folder of photos under the studio's roots");
}

function openSource(index) {
  const source = state.sources[index];
  if (source.problem) { say(source.problem, true); return; }
  state.source = source; state.offset = 0;
  state.split = Object.keys(source.counts)[0]; state.label = source.classes[0];
  $("browser").hidden = false;
  $("source-name").textContent = source.name;
  $("split").replaceChildren(...Object.keys(source.counts).map((s) => el("option", { value: s }, s)));
  $("split").value = state.split;
  drawChips();
  loadPage();
  loadJournal();
  $("findings").hidden = true;
  $("checked").hidden = true;
  state.checked = null;
  loadAudit();
}

function drawChips() {
  const counts = state.source.counts[state.split];
  $("classes").replaceChildren(...state.source.classes.map((name) => {
    const chip = el("button", { class: "chip", type: "button", "aria-pressed": String(name === state.label) },
                    `${name} (${counts[name]})`);
    chip.addEventListener("click", () => { state.label = name; state.offset = 0; drawChips(); loadPage(); });
    return chip;
  }));
}

async function loadPage() {
  const s = state.source;
  const query = new URLSearchParams({ root: s.root, path: s.path, split: state.split, class: state.label,
                                      offset: state.offset, limit: state.limit });
  const ticket = state.ticket = (state.ticket || 0) + 1;
  const page = await json("/api/images?" + query);
  if (ticket !== state.ticket) return;  // a later class or page was asked for meanwhile: its answer wins
  for (const url of state.blobs) URL.revokeObjectURL(url);  // one page's thumbnails held at a time
  state.blobs = [];
  const grid = $("grid");
  grid.replaceChildren(...page.files.map((file) => {
    const img = el("img", { alt: file, loading: "lazy" });
    thumbnail(img, s.root, file);
    return el("figure", {}, img, el("figcaption", { title: file }, file.split("/").pop()), fixControl(file));
  }));
  const last = Math.min(page.offset + page.files.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}-${last} of ${page.total}` : "no photos";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

// A photo relabelled or removed goes through the source's journal (Undo puts it back, byte for byte).
function fixControl(file) {
  // digits in IDX files are read, not moved: the four files hold them all
  if (state.source.layout === "idx") return el("span", { class: "note" }, "in the IDX files");
  const select = el("select", { class: "fix", "aria-label": `fix ${file}` }, el("option", { value: "" }, "fix…"),
                    ...state.source.classes.filter((name) => name !== state.label)
                      .map((name) => el("option", { value: "relabel:" + name }, `relabel to ${name}`)),
                    el("option", { value: "remove" }, "remove"));
  select.addEventListener("change", () => {
    const [action, to] = select.value.split(":");
    if (action) fixPhoto({ root: state.source.root, path: state.source.path, photo: file, action, to });
  });
  return select;
}

async function fixPhoto(body) {
  try {
    const answer = await post("/api/fix", body);
    const m = answer.moved;
    say(m.action === "remove" ? `${m.from} removed (Undo puts it back)` : `${m.from} relabelled: now ${m.to} (Undo puts it back)`);
    showJournal(answer.journal);
    await refreshSource();
    return answer;
  } catch (e) { say(e.message, true); if (state.source) loadPage(); return null; }
}

async function undoLast() {
  try {
    const answer = await post("/api/undo", { root: state.source.root, path: state.source.path });
    say(answer.put_back.length ? `put back ${answer.put_back.map((m) => m.from).join(", ")}` : "nothing was put back");
    showJournal(answer.journal);
    await refreshSource();
    if (state.findings) loadAudit();
  } catch (e) { say(e.message, true); }
}

function showJournal(journal) {
  state.journal = journal;
  $("undo").disabled = !journal.moves;
  const last = journal.last;
  $("journal-info").textContent = !last ? "nothing to undo"
    : `last: ${last.action} ${last.from}${last.action === "relabel" ? " → " + last.to : ""} · ${journal.moves} move(s) in the journal`;
}

async function loadJournal() {
  try { showJournal(await json("/api/journal?" + new URLSearchParams({ root: state.source.root, path: state.source.path }))); }
  catch (e) { say(e.message, true); }
}

async function refreshSource() {  // the counts and the page after a photo moved
  const { root, path } = state.source;
  await loadSources();
  const again = state.sources.find((s) => s.root === root && s.path === path);
  if (!again || again.problem) return;
  state.source = again;
  drawChips();
  await loadPage();
}

// ---- The audit: suspected mislabels, near-duplicates and leaks, outliers, each fixed or kept here ----
const TABLE_TITLES = { label_issues: "suspected mislabels", near_duplicates: "near-duplicates", outliers: "outliers" };

// ---- Check: data check's findings, here and now (the files that cannot be read, the same bytes twice) ----
async function checkSource() {
  const s = state.source;
  $("check").disabled = true;
  $("check-info").textContent = "";
  say(`checking ${s.name}: every photo decoded once (then cached)...`);
  try {
    state.checked = await post("/api/check", { root: s.root, path: s.path });
    if (s === state.source) { drawCheck(); say(`${s.name} checked`); }
  } catch (e) { say(e.message, true); }
  $("check").disabled = false;
}

function drawCheck() {
  const c = state.checked;
  $("checked").hidden = false;
  $("check-info").textContent = c.problem ? `cannot train: ${c.problem}` : "ready to train";
  $("check-info").classList.toggle("bad", Boolean(c.problem));
  $("check-lines").replaceChildren(...[...c.warnings.map((w) => `warning: ${w}`), ...c.statistics,
                                       ...(c.data_path ? [`training: ${c.data_path}`] : [])].map((line) => el("li", {}, line)));
  const removal = (photo, label) => {
    const button = el("button", { type: "button", class: "act" }, label);
    button.addEventListener("click", async () => {
      const s = state.source;
      if (await fixPhoto({ root: s.root, path: s.path, photo, action: "remove" })) checkSource();
    });
    return button;
  };
  $("check-skipped").replaceChildren(...(c.skipped.length ? [el("h4", {}, `Files that cannot be used (${c.skipped.length})`)] : []),
    ...c.skipped.map((file) => el("p", { class: "skipped" }, `${file.photo}: ${file.reason} `, removal(file.photo, "remove"))));
  for (const url of state.checkBlobs || []) URL.revokeObjectURL(url);
  state.checkBlobs = [];
  $("check-duplicates").replaceChildren(
    ...(c.duplicates.length ? [el("h4", {}, `The same bytes in more than one file (${c.duplicates.length} group(s); `
                                            + "a copy across splits lets the test score what training saw: "
                                            + "remove the one in train)")] : []),
    // every copy has its button (which to keep is the person's call); once one is left, the group is gone
    ...c.duplicates.slice(0, 40).map((group, index) => el("div", { class: "grid duplicates" }, ...group.map((copy) => {
      const img = el("img", { alt: copy.photo, loading: "lazy" });
      thumbnail(img, state.source.root, copy.photo, state.checkBlobs);
      return el("figure", {}, img, el("figcaption", { title: copy.photo }, `group ${index + 1} · ${copy.split}`),
                removal(copy.photo, "remove this copy"));
    }))));
}

async function startAudit() {
  const s = state.source;
  try {
    await post("/api/audit", { root: s.root, path: s.path });
    $("audit").disabled = true;
    loadAudit();
  } catch (e) { say(e.message, true); }
}

async function loadAudit() {
  const s = state.source;
  if (!s) return;
  let answer;
  try { answer = await json("/api/audit?" + new URLSearchParams({ root: s.root, path: s.path })); }
  catch (e) { say(e.message, true); return; }
  if (s !== state.source) return;
  $("audit").disabled = answer.state === "auditing";
  if (state.auditTimer) clearTimeout(state.auditTimer);
  if (answer.state === "auditing") {
    $("audit-info").textContent = "auditing: features of every photo, then cross-validated predictions...";
    state.auditTimer = setTimeout(loadAudit, 1000);
    return;
  }
  if (answer.state === "failed") { $("audit-info").textContent = ""; say(`the audit failed: ${answer.why}`, true); }
  $("findings").hidden = answer.state !== "done";
  if (answer.state !== "done") { $("audit-info").textContent = answer.state === "none" ? "not audited yet" : ""; return; }
  state.findings = answer.findings;
  drawFindings();
}

function drawFindings() {
  const counts = [];
  for (const [table, title] of Object.entries(TABLE_TITLES)) {
    const rows = state.findings[table].filter((row) => row.action !== "keep");
    counts.push(`${rows.filter((row) => row.here).length} ${title}`);
    for (const url of (state.findingBlobs || {})[table] || []) URL.revokeObjectURL(url);
    state.findingBlobs = Object.assign(state.findingBlobs || {}, { [table]: [] });
    $("found-" + table).replaceChildren(...rows.slice(0, 60).map((row) => finding(table, row)));
  }
  $("audit-info").textContent = `audited: ${counts.join(", ")} (Undo puts back a relabel or a removal)`;
}

function finding(table, row) {
  const figure = el("figure", { class: "finding" });
  const img = el("img", { alt: row.photo, loading: "lazy" });
  if (row.here) thumbnail(img, state.source.root, row.photo, state.findingBlobs[table]);
  const about = table === "label_issues" ? `${row.split}: ${row.label}, maybe ${row.suggested} (${Number(row.score).toFixed(2)})`
    : table === "near_duplicates" ? `group ${row.group} · ${row.split} · ${Number(row.similarity).toFixed(3)}`
    : `${row.split}: ${row.label} · ${Number(row.score).toFixed(2)}`;
  figure.append(img, el("figcaption", { title: row.photo }, about));
  if (!row.here) { figure.append(el("span", { class: "note" }, "moved")); return figure; }
  const act = (label, handler) => {
    const button = el("button", { type: "button", class: "act" }, label);
    button.addEventListener("click", handler);
    return button;
  };
  const fixed = async (action, to) => {
    const s = state.source;
    if (await fixPhoto({ root: s.root, path: s.path, photo: row.photo, action, to })) loadAudit();
  };
  const movable = state.source.layout !== "idx";  // a digit of IDX files is kept or left, never moved
  if (movable && table === "label_issues") figure.append(act(`relabel to ${row.suggested}`, () => fixed("relabel", row.suggested)));
  if (movable) figure.append(act("remove", () => fixed("remove")));
  figure.append(act("keep", async () => {
    try {
      await post("/api/audit/keep", { root: state.source.root, path: state.source.path, photo: row.photo, table });
      say(`${row.photo} kept (written in ${table}.csv)`);
      loadAudit();
    } catch (e) { say(e.message, true); }
  }));
  return figure;
}

async function thumbnail(img, root, file, held = state.blobs) {
  try {
    const blob = await (await api("/api/thumb?" + new URLSearchParams({ root, path: file }))).blob();
    const url = URL.createObjectURL(blob);
    held.push(url);
    img.src = url;
  } catch (e) { img.alt = `${file}: ${e.message}`; }
}

// ---- New photos: dropped or chosen, one class a drop, into a dataset folder under a root ----
const MAX_PHOTO = 10 * 2 ** 20, MAX_REQUEST = 9.5 * 2 ** 20, MAX_FILES = 64;  // serve's limits

async function dropPhotos(files) {
  const folder = $("drop-folder").value.trim(), label = $("drop-class").value.trim();
  const result = $("drop-result");
  result.replaceChildren();
  if (!folder || !label) { say("name the folder and the class of the photos first", true); return; }
  const refused = [], batches = [[]];
  let size = 0;
  for (const file of files) {
    if (file.size > MAX_PHOTO) { refused.push({ file: file.name, why: `too big: ${(file.size / 2 ** 20).toFixed(1)} MB, at most 10 MB a photo` }); continue; }
    if (size + file.size > MAX_REQUEST || batches[batches.length - 1].length >= MAX_FILES) { batches.push([]); size = 0; }
    batches[batches.length - 1].push(file); size += file.size;
  }
  let saved = 0, where = null;
  for (const batch of batches.filter((b) => b.length)) {
    const form = new FormData();
    for (const file of batch) form.append("files", file, file.name);
    try {
      const answer = await json("/api/drop?" + new URLSearchParams({ root: $("drop-root").value, folder, class: label }),
                                { method: "POST", body: form });
      saved += answer.saved.length; refused.push(...answer.refused); where = answer.folder;
    } catch (e) { refused.push(...batch.map((file) => ({ file: file.name, why: e.message }))); }
  }
  result.replaceChildren(...refused.map((r) => el("li", { class: "problem" }, `${r.file}: ${r.why}`)));
  await loadSources();
  const index = where ? state.sources.findIndex((s) => s.root === where.root && s.path === where.path) : -1;
  if (index >= 0 && !state.sources[index].problem) openSource(index);
  say(`${saved} photo(s) saved into ${folder}/${label}${refused.length ? `, ${refused.length} refused (below)` : ""}`, saved === 0);
}

// ---- Train ----
async function loadRecipes() {
  state.recipes = await json("/api/recipes");
  $("recipe").replaceChildren(...state.recipes.map((r) => el("option", { value: r.name }, r.name)));
  describeRecipe();
}

function describeRecipe() {
  const recipe = state.recipes.find((r) => r.name === $("recipe").value);
  if (!recipe) return;
  const about = recipe.description || "";
  const parts = [about && !/[.!?]$/.test(about) ? about + "." : about];
  if (recipe.reached) parts.push(`Reached: ${recipe.reached}.`);
  const seconds = (state.estimates || {})[recipe.name];
  if (seconds == null && state.estimating === recipe.name) parts.push("Estimating its time here (a second or two)...");
  if (seconds != null) parts.push(`About ${seconds < 90 ? Math.max(1, Math.round(seconds)) + " s" : Math.round(seconds / 60) + " min"} `
                                  + "on this folder here (an estimate from this machine's measured speed).");
  $("recipe-about").textContent = parts.join(" ");
  for (const field of ["epochs", "batch_size", "learning_rate", "image_size"]) {
    $(field).placeholder = recipe[field] == null ? "" : String(recipe[field]);
  }
  if (state.augmentRecipe !== recipe.name) { state.augmentRecipe = recipe.name; drawSwitches(recipe); }
}

// ---- Augmentation: a switch per transform, each with its amount (ImageDataGenerator's names); the
// amount shown when a recipe leaves one off is the chapter's own (rotation 40, shifts, shear, zoom 0.2).
const AUGMENT = [["rotation_range", "rotation ±°", 40], ["width_shift_range", "width shift", 0.2],
                 ["height_shift_range", "height shift", 0.2], ["shear_range", "shear", 0.2],
                 ["zoom_range", "zoom", 0.2], ["horizontal_flip", "horizontal flip", null],
                 ["vertical_flip", "vertical flip", null]];

function drawSwitches(recipe) {
  const own = recipe.augment || {};
  $("augment-switches").replaceChildren(...AUGMENT.map(([field, words, usual]) => {
    const value = own[field];
    const on = Array.isArray(value) ? true : Boolean(value);
    const box = el("input", { type: "checkbox", id: "aug-" + field, "data-field": field });
    box.checked = on;
    const label = el("label", { for: "aug-" + field }, box, " " + words);
    if (usual === null) return label;
    const amount = el("input", { type: "text", id: "aug-" + field + "-amount", inputmode: "decimal",
                                 "aria-label": words + " amount" });
    amount.value = on ? (Array.isArray(value) ? value.join(",") : String(value)) : String(usual);
    return el("span", {}, label, " ", amount);
  }));
  for (const input of $("augment-switches").querySelectorAll("input")) input.addEventListener("input", previewSoon);
  previewSoon();
}

function augmentChosen() {
  // every switch's field: its amount when on, nothing (0, false) when off; a pair "low,high" is a list
  const chosen = {};
  for (const [field, words, usual] of AUGMENT) {
    const on = $("aug-" + field).checked;
    if (usual === null) { chosen[field] = on; continue; }
    const text = $("aug-" + field + "-amount").value.trim();
    const amount = text.includes(",") ? text.split(",").map(Number) : Number(text);
    if (on && [].concat(amount).some((n) => !Number.isFinite(n))) throw new Error(`${words}: "${text}" is not a number`);
    chosen[field] = on ? amount : 0;
  }
  return chosen;
}

function augmentChanges() {
  // only what differs from the recipe's own: an untouched recipe trains as it is named
  const recipe = state.recipes.find((r) => r.name === $("recipe").value);
  const own = (recipe && recipe.augment) || {};
  const changes = {};
  for (const [field, value] of Object.entries(augmentChosen())) {
    const was = own[field] === undefined ? null : own[field];
    const off = (v) => v === 0 || v === false || v === null;
    if (JSON.stringify(value) !== JSON.stringify(was) && !(off(value) && off(was))) changes[field] = value;
  }
  return Object.keys(changes).length ? changes : null;
}

function previewSoon() {
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(() => previewAugment().catch((e) => { $("augment-said").textContent = e.message; }), 200);
}

async function previewAugment() {
  const source = state.sources[Number($("train-source").value)];
  if (!source || $("train").hidden) return;
  const asked = ++state.previewAsked;
  $("augment-said").textContent = "";
  const body = { root: source.root, path: source.path, recipe: $("recipe").value, augment: augmentChanges(),
                 seed: state.previewSeed };
  const answer = await api("/api/augment/preview", { method: "POST", headers: { "Content-Type": "application/json" },
                                                     body: JSON.stringify(body) });
  const picture = await answer.blob();
  if (asked !== state.previewAsked) return;  // a later change asked for another picture meanwhile
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(picture);
  $("augment-preview").src = state.previewUrl;
  $("augment-preview").hidden = false;
  const changes = body.augment;
  $("augment-said").textContent = changes ? `changed from ${body.recipe}'s own: ${Object.keys(changes).join(", ")}`
                                          : `${body.recipe}'s own augmentation`;
}

function recipeForDigits() {
  // digits from IDX files: the seed's recipe for digits, as `smallvision train` chooses without --recipe
  const chosen = state.sources[Number($("train-source").value)];
  if (chosen && chosen.layout === "idx" && !/mnist/.test($("recipe").value)) { $("recipe").value = "seed-mnist"; describeRecipe(); }
}

async function estimate() {
  // the chosen recipe's estimate for the chosen folder, measured on first asking (a second or two a network)
  const source = state.sources[Number($("train-source").value)];
  const recipe = $("recipe").value;
  if (!source || !recipe) return;
  const folder = `${source.root}/${source.path}`;
  if (state.estimated !== folder) { state.estimated = folder; state.estimates = {}; }
  if (recipe in state.estimates) { describeRecipe(); return; }
  state.estimating = recipe;
  describeRecipe();
  try {
    const answer = await json("/api/estimates?" + new URLSearchParams({ root: source.root, path: source.path, recipe }));
    if (state.estimated !== folder) return;  // another folder was chosen meanwhile
    Object.assign(state.estimates, answer.estimates);
    if (answer.why) say(answer.why);
  } catch (e) { say(`no estimate: ${e.message}`, true); }
  if (state.estimating === recipe) state.estimating = null;
  describeRecipe();
}

async function start(event) {
  event.preventDefault();
  const source = state.sources[Number($("train-source").value)];
  if (!source) { say("choose a source first", true); return; }
  const body = { root: source.root, path: source.path, recipe: $("recipe").value };
  for (const field of ["epochs", "batch_size", "image_size"]) if ($(field).value) body[field] = Number($(field).value);
  if ($("learning_rate").value) body.learning_rate = Number($("learning_rate").value);
  try {
    const changes = augmentChanges();
    if (changes) body.augment = changes;
    const answer = await post("/api/train", body);
    say(`started ${answer.run}`);
    watch(answer.run);
  } catch (e) { say(e.message, true); }
}

function watch(name) {
  state.watching = name; state.liveOffset = 0; state.rows = [];
  $("watch").hidden = false;
  $("watch-name").textContent = name;
  $("try-link").hidden = true;
  $("review").hidden = true;
  state.review = null;
  showTab("train");
  if (state.timer) clearTimeout(state.timer);
  poll();
}

async function poll() {
  const name = state.watching;
  let answer;
  try {
    answer = await json(`/api/runs/${encodeURIComponent(name)}/live?offset=${state.liveOffset}`);
  } catch (e) { say(e.message, true); state.timer = setTimeout(poll, 2000); return; }
  if (name !== state.watching) return;
  state.liveOffset = answer.offset;
  if (answer.rows.length) {
    state.rows.push(...answer.rows);
    drawChart();
  }
  figures(answer);
  if (answer.state !== state.lastState && ["finished", "stopped"].includes(answer.state)) say(`${name} ${answer.state}`);
  if (answer.state === "finished" && !state.review && state.lastState !== "finished") reviewRun(false);
  state.lastState = answer.state;
  const training = answer.state === "training";
  $("stop").disabled = !training;
  $("resume").disabled = !(answer.state === "stopped" || answer.state === "ended");
  $("ship").hidden = answer.state !== "finished";
  $("serve-line").hidden = answer.state !== "finished";
  $("serve-line").querySelector("code").textContent = `smallvision serve ${answer.run_path || name}`;
  if (answer.why) say(answer.why, true);
  state.timer = setTimeout(poll, training ? 250 : 2000);
}

function figures(answer) {
  const batch = [...state.rows].reverse().find((r) => r.event === "batch");
  const epoch = [...state.rows].reverse().find((r) => r.event === "epoch");
  const parts = [answer.state];
  if (epoch) parts.push(`epoch ${epoch.epoch}/${epoch.epochs}`, `val_accuracy ${epoch.val_accuracy == null ? "-" : epoch.val_accuracy.toFixed(4)}`);
  if (batch && answer.state === "training") {
    parts.push(`${Math.round(batch.images_per_second)} img/s`);
    if (batch.eta_seconds != null) parts.push(`ETA ${Math.round(batch.eta_seconds)} s`);
  }
  $("watch-figures").textContent = parts.join(" · ");
}

function drawChart() {
  const canvas = $("chart"), g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34, half = w / 2;
  g.clearRect(0, 0, w, h);
  const stages = [...new Set(state.rows.map((r) => r.stage))];
  const stage = stages[stages.length - 1];
  // an epoch redone after a kill (its row written, its checkpoint not) is drawn once, as it was last done
  const epochs = [...new Map(state.rows.filter((r) => r.event === "epoch" && r.stage === stage)
                              .map((r) => [r.epoch, r])).values()].sort((a, b) => a.epoch - b.epoch);
  const batches = state.rows.filter((r) => r.event === "batch" && r.stage === stage);
  const total = Math.max(1, ...state.rows.filter((r) => r.stage === stage && r.epochs).map((r) => r.epochs));
  const perEpoch = (state.rows.find((r) => r.event === "start" && r.stage === stage) || {}).steps_per_epoch || 1;
  for (const [index, metric] of ["loss", "accuracy"].entries()) {
    const left = index * half + pad, right = (index + 1) * half - 10, top = 20, bottom = h - pad;
    const values = epochs.flatMap((r) => [r[metric], r["val_" + metric]]).concat(batches.map((r) => r[metric]))
      .filter((v) => typeof v === "number");
    const high = metric === "accuracy" ? 1 : Math.max(0.1, ...values), low = metric === "accuracy" ? Math.min(0.5, ...values) : 0;
    const x = (epoch) => left + (right - left) * epoch / total;
    const y = (v) => bottom - (bottom - top) * (v - low) / ((high - low) || 1);
    g.strokeStyle = "#d5dae3"; g.lineWidth = 1; g.strokeRect(left, top, right - left, bottom - top);
    g.fillStyle = "#1d2330"; g.font = "13px system-ui";
    g.fillText(`${metric}${stages.length > 1 ? ` (stage ${stage})` : ""}`, left, 14);
    g.fillStyle = "#5b6475"; g.font = "11px system-ui";
    g.fillText(high.toFixed(2), left - 30, top + 8); g.fillText(low.toFixed(2), left - 30, bottom);
    g.fillText(`epoch ${total}`, right - 48, bottom + 14);
    const line = (points, colour, dash, width) => {
      if (!points.length) return;
      g.strokeStyle = colour; g.setLineDash(dash); g.lineWidth = width; g.beginPath();
      points.forEach(([px, py], i) => (i ? g.lineTo(px, py) : g.moveTo(px, py)));
      g.stroke(); g.setLineDash([]);
      g.fillStyle = colour;
      if (width > 1) for (const [px, py] of points) { g.beginPath(); g.arc(px, py, 2.5, 0, 7); g.fill(); }
    };
    let smooth = null;  // the per-batch line, smoothed as it goes
    line(batches.map((r) => { smooth = smooth == null ? r[metric] : 0.7 * smooth + 0.3 * r[metric];
                              return [x(r.epoch - 1 + r.batch / perEpoch), y(smooth)]; }), "#9db4e8", [], 1);
    line(epochs.map((r) => [x(r.epoch), y(r[metric])]), "#2357c6", [], 2);
    line(epochs.filter((r) => typeof r["val_" + metric] === "number").map((r) => [x(r.epoch), y(r["val_" + metric])]),
         "#c0392b", [5, 4], 2);
  }
  g.font = "12px system-ui";
  g.fillStyle = "#2357c6"; g.fillText("training", pad, h - 6);
  g.fillStyle = "#c0392b"; g.fillText("validation", pad + 70, h - 6);
  g.fillStyle = "#9db4e8"; g.fillText("per batch", pad + 150, h - 6);
}

async function stop() {
  try { await post(`/api/runs/${encodeURIComponent(state.watching)}/stop`); say(`stopping ${state.watching}: it writes a checkpoint`); }
  catch (e) { say(e.message, true); }
}

async function resume() {
  try { await post(`/api/runs/${encodeURIComponent(state.watching)}/resume`); say(`resuming ${state.watching}`); watch(state.watching); }
  catch (e) { say(e.message, true); }
}

// ---- Review and ship ----
async function make(what) {
  const name = state.watching;
  say(`making the ${what} of ${name}...`);
  try {
    const made = await post(`/api/runs/${encodeURIComponent(name)}/make/${what}`);
    const link = made.file + (state.token ? `?token=${encodeURIComponent(state.token)}` : "");
    if (what === "report") window.open(link, "_blank", "noopener");
    else { const a = el("a", { href: link, download: made.name }); document.body.append(a); a.click(); a.remove(); }
    say(`${made.name} made`);
  } catch (e) { say(e.message, true); }
}

async function reviewRun(fresh) {
  const name = state.watching;
  if (fresh) say(`evaluating ${name} on its test split...`);
  try {
    const answer = fresh ? await post(`/api/runs/${encodeURIComponent(name)}/review`)
                         : await json(`/api/runs/${encodeURIComponent(name)}/review`);
    if (name !== state.watching || !answer.reviewed) return;
    state.review = answer;
    drawReview();
    if (fresh) say(`${name} reviewed: ${answer.images} ${answer.split} photos`);
  } catch (e) { if (fresh) say(e.message, true); else $("review").hidden = true; }
}

function drawReview() {
  const r = state.review;
  $("review").hidden = false;
  $("review-figures").textContent = `${r.split} · accuracy ${r.accuracy.toFixed(4)} · balanced ${r.balanced_accuracy.toFixed(4)}`
    + (r.ece == null ? "" : ` · ECE ${r.ece.toFixed(4)}`) + ` · ${r.images} photos`;
  const head = el("tr", {}, el("th", {}, "true \\ predicted"), ...r.class_names.map((n) => el("th", {}, n)));
  const rows = r.class_names.map((trueName, i) => el("tr", {}, el("th", {}, trueName), ...r.class_names.map((predName, j) => {
    const count = r.confusion[i][j];
    const cell = el("button", { type: "button", class: i === j ? "cell hit" : "cell miss", "data-true": trueName,
                                "data-predicted": predName, "aria-label": `${count} ${trueName} predicted ${predName}` }, String(count));
    cell.addEventListener("click", () => showPhotos((p) => p.true === trueName && p.predicted === predName,
                                                    `${trueName} predicted ${predName}`));
    return el("td", {}, cell);
  })));
  $("confusion").replaceChildren(head, ...rows);
  showPhotos((p) => p.true !== p.predicted, "mistakes, highest loss first");
}

function showPhotos(test, title) {
  const r = state.review;
  const chosen = r.photos.filter(test);
  state.shown = chosen.slice(0, 60);  // highest loss first (the server sorted them)
  $("review-info").textContent = `${title}: ${chosen.length} photo(s)${chosen.length > 60 ? ", the first 60 shown" : ""}`;
  for (const url of state.reviewBlobs || []) URL.revokeObjectURL(url);
  state.reviewBlobs = [];
  $("review-grid").replaceChildren(...state.shown.map((photo) => {
    const figure = el("figure", { class: "reviewed" });
    const img = el("img", { alt: photo.image, loading: "lazy" });
    if (photo.at) thumbnail(img, photo.at.root, photo.at.path, state.reviewBlobs);
    else img.alt = `${photo.image} (outside the studio's folders)`;
    figure.append(img, el("figcaption", { title: photo.image },
      `${photo.true} → ${photo.predicted} ${(photo.probability * 100).toFixed(0)}% · loss ${photo.loss.toFixed(2)}`));
    if (photo.at && r.source_at && photo.true !== photo.predicted && !photo.moved) {
      const button = el("button", { type: "button", class: "relabel" }, `relabel to ${photo.predicted}`);
      button.addEventListener("click", async () => {
        const answer = await fixPhoto({ root: r.source_at.root, path: r.source_at.path, photo: photo.at.path,
                                        action: "relabel", to: photo.predicted });
        if (answer) { photo.moved = true; button.replaceWith(el("span", { class: "note" }, `now ${answer.moved.to}`)); }
      });
      figure.append(button);
    }
    photo.figure = figure;
    return figure;
  }));
}

async function gradcamShown() {
  const shown = (state.shown || []).filter((p) => p.at && !p.moved);
  if (!shown.length) { say("no photo here to explain", true); return; }
  say(`Grad-CAM for ${shown.length} photo(s)...`);
  try {
    const pictures = await post(`/api/runs/${encodeURIComponent(state.watching)}/gradcam`,
                                shown.map((p) => ({ root: p.at.root, path: p.at.path })));
    pictures.forEach((picture, i) => {
      if (!picture.picture) return;
      const img = el("img", { class: "gradcam", alt: `Grad-CAM of ${shown[i].image}` });
      api(picture.picture).then((a) => a.blob()).then((blob) => {
        const url = URL.createObjectURL(blob); state.reviewBlobs.push(url); img.src = url;
      });
      shown[i].figure.append(img);
    });
    say("Grad-CAM: where the evidence for the predicted class lies");
  } catch (e) { say(e.message, true); }
}

async function tryRun() {
  say(`starting a page to try ${state.watching} on...`);
  try {
    const answer = await post(`/api/runs/${encodeURIComponent(state.watching)}/try`);
    const link = $("try-link");
    link.href = answer.url; link.hidden = false; link.textContent = `try ${state.watching}: ${answer.url}`;
    say("the try page is ready: drop, paste or choose photos there");
  } catch (e) { say(e.message, true); }
}

// ---- Runs ----
async function loadRuns() {
  const runs = await json("/api/runs");
  const body = $("run-table").querySelector("tbody");
  body.replaceChildren(...runs.map((run) => {
    const m = run.metrics || {};
    const row = el("tr", { tabindex: "0" }, el("td", {}, run.name), el("td", {}, run.state), el("td", {}, run.recipe || ""),
                   el("td", {}, String(run.epochs_done)),
                   el("td", {}, m.test_accuracy == null ? "" : m.test_accuracy.toFixed(4)),
                   el("td", {}, m.test_balanced_accuracy == null ? "" : m.test_balanced_accuracy.toFixed(4)));
    row.addEventListener("click", () => watch(run.name));
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") watch(run.name); });
    return row;
  }));
  const live = runs.find((run) => run.state === "training");
  if (live && !state.watching) watch(live.name);  // a run trained in a terminal shows too
}

async function compareRuns() {
  const runs = (await json("/api/runs")).filter((run) => run.state === "finished").map((run) => run.name);
  if (!runs.length) { say("no finished run to compare yet", true); return; }
  try {
    const blob = await (await api("/api/compare.png?" + new URLSearchParams({ names: runs.join(",") }))).blob();
    const img = $("compare-picture");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob); img.hidden = false;
  } catch (e) { say(e.message, true); }
}

async function begin() {
  try {
    const here = await json("/api/state");
    $("token-form").hidden = true;
    $("drop-root").replaceChildren(...here.roots.map((name, i) => el("option", { value: i }, name)));
    await Promise.all([loadSources(), loadRecipes()]);
    if (here.busy) watch(here.busy);
  } catch (e) { say(e.message, true); }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of ["data", "train", "runs"]) $("tab-" + tab).addEventListener("click", () => showTab(tab));
  $("split").addEventListener("change", () => { state.split = $("split").value; state.offset = 0; drawChips(); loadPage(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadPage(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadPage(); });
  $("recipe").addEventListener("change", () => { describeRecipe(); estimate(); });
  $("train-source").addEventListener("change", () => { recipeForDigits(); estimate(); previewSoon(); });
  $("tab-train").addEventListener("click", () => { recipeForDigits(); estimate(); previewSoon(); });
  $("augment-again").addEventListener("click", () => { state.previewSeed += 1; previewSoon(); });
  $("start-form").addEventListener("submit", start);
  $("stop").addEventListener("click", stop);
  $("resume").addEventListener("click", resume);
  for (const what of ["report", "onnx", "keras"]) $("make-" + what).addEventListener("click", () => make(what));
  $("try").addEventListener("click", tryRun);
  $("review-button").addEventListener("click", () => reviewRun(true));
  $("show-mistakes").addEventListener("click", () => state.review && showPhotos((p) => p.true !== p.predicted, "mistakes, highest loss first"));
  $("gradcam-these").addEventListener("click", gradcamShown);
  $("undo").addEventListener("click", undoLast);
  $("audit").addEventListener("click", startAudit);
  $("check").addEventListener("click", checkSource);
  $("drop-files").addEventListener("change", () => { dropPhotos([...$("drop-files").files]); $("drop-files").value = ""; });
  const zone = $("drop-form");
  zone.addEventListener("submit", (e) => e.preventDefault());
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); dropPhotos([...e.dataTransfer.files]); });
  $("compare").addEventListener("click", compareRuns);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault(); state.token = $("token").value; sessionStorage.setItem("studio-token", state.token); begin();
  });
  begin();
});
