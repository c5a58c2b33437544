// The drgrade page: send one photograph to /api/grade and show what comes back.
// Text from the server (file names, messages) is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null; // /api/model: grade names, referable grade, upload limit

function megabytes(bytes) {
  return `${Math.round((bytes / 1048576) * 10) / 10} MB`;
}

function percent(p) {
  return `${(100 * p).toFixed(1)} %`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function loadModel() {
  try {
    const response = await fetch("api/model");
    model = await response.json();
  } catch (error) {
    showError(`The server does not answer (${error.message}). Is drgrade serve running?`);
    return;
  }
  const kind = model.head === "regression" ? "regression (a score from 0 to 4)" : "classification";
  $("model").textContent = `Model: ${model.model}, ${kind}, ${model.image_size} px input.`;
  $("limit").textContent = megabytes(model.max_upload_bytes);
}

async function grade(file) {
  $("error").hidden = true;
  $("result").hidden = true;
  // Checked here too: a server refusing a large body early can cut the connection first.
  if (model && file.size > model.max_upload_bytes) {
    showError(`${file.name} is ${megabytes(file.size)}: larger than the ` +
              `${megabytes(model.max_upload_bytes)} limit.`);
    return;
  }
  $("status").textContent = `Grading ${file.name}…`;
  $("submit").disabled = true;
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch("api/grade", { method: "POST", body: form });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(`Not graded (HTTP ${response.status}): ${answer.detail || response.statusText}`);
      return;
    }
    showResult(answer);
    $("status").textContent = "";
  } catch (error) {
    showError(`The upload failed (${error.message}).`);
  } finally {
    $("submit").disabled = false;
  }
}

function showResult(r) {
  const names = model ? model.grades : [];
  $("file-name").textContent = r.image;
  $("grade").textContent = r.grade;
  $("grade-name").textContent = r.grade_name;
  $("result").dataset.grade = r.grade;

  const referable = $("referable");
  referable.className = r.referable ? "referable" : "not-referable";
  referable.textContent = r.referable
    ? `Referable diabetic retinopathy (grade ${r.referable_grade} or worse): refer to an ophthalmologist.`
    : `Not referable (grade below ${r.referable_grade}).`;

  $("probabilities-block").hidden = r.probabilities === null;
  if (r.probabilities !== null) {
    const body = $("probabilities").tBodies[0];
    body.replaceChildren();
    r.probabilities.forEach((p, g) => {
      const row = body.insertRow();
      if (g === r.grade) row.className = "predicted";
      row.insertCell().textContent = `${g} ${names[g] || ""}`;
      row.insertCell().textContent = percent(p);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(0.5, 100 * p)}%`;
      row.insertCell().append(bar);
    });
  }

  $("score-block").hidden = r.score === null;
  if (r.score !== null) {
    const cuts = r.cut_points.map((c) => c.toFixed(2)).join(", ");
    $("score-text").textContent =
      `${r.score.toFixed(2)} on the 0 to 4 scale; the cut points between grades are ${cuts}.`;
    const at = (value) => `${Math.min(100, Math.max(0, (100 * value) / 4))}%`;
    $("score-marker").style.left = at(r.score);
    // Ticks at the cut points: the grade is the stretch between two ticks the marker is in.
    $("scale").replaceChildren($("score-marker"), ...r.cut_points.map((c) => {
      const tick = document.createElement("div");
      tick.className = "cut";
      tick.style.left = at(c);
      return tick;
    }));
    $("scale-labels").replaceChildren(...names.map((n, g) => {
      const label = document.createElement("span");
      label.textContent = `${g} ${n}`;
      label.style.left = at(g);
      return label;
    }));
  }

  $("heat-map-block").hidden = !r.heat_map;
  if (r.heat_map) {
    $("heat-map").src = r.heat_map;
    $("heat-map-method").textContent = r.heat_map_method === "gradcam++" ? "Grad-CAM++" : "Grad-CAM";
  }
  $("warning").hidden = !r.warning;
  $("warning").textContent = r.warning || "";
  $("heat-map-note").hidden = !r.heat_map_note;
  $("heat-map-note").textContent = r.heat_map_note || "";
  $("result").hidden = false;
}

function setUp() {
  const input = $("photo");
  // Grading starts as soon as a file is chosen; the button grades it again.
  input.addEventListener("change", () => input.files.length && grade(input.files[0]));
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.files.length) grade(input.files[0]);
    else showError("Choose a photograph first.");
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) grade(event.dataTransfer.files[0]);
  });
  loadModel();
}

setUp();
