// The docproc console's script: local times, live parts, the console's calls to the API
// (/ui/api, the JSON API's own handlers behind the console's session and CSRF token), uploads
// with progress, search, redrives and confirmations. No library, no build step.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

function localTimes(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    const moment = new Date(time.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) {
      time.textContent = moment.toLocaleString();
      time.title = time.getAttribute("datetime");
    }
  }
}

function notice(text, kind) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = "notice " + (kind || "ok");
  box.hidden = false;
}

function signInAgain() {
  window.location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
}

// A call to the API; resolves to the decoded answer, rejects with the API's own sentence.
async function api(method, path, body) {
  const options = { method, headers: { "X-CSRF-Token": CSRF, Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/ui/api" + path, options);
  if (response.status === 401) {
    signInAgain();
    throw new Error("sign in first");
  }
  const text = await response.text();
  const answer = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((answer && (answer.detail || answer.title)) || response.statusText);
    error.status = response.status;
    error.caution = answer && answer.caution; // a 409 that force=true would overrule
    throw error;
  }
  return answer;
}

// Live parts: the same template fetched again, swapped in unless focus is inside it.
function live(region) {
  const every = Number(region.dataset.every || 2000);
  let timer = null;
  async function refresh() {
    timer = null;
    if (document.hidden) {
      timer = setTimeout(refresh, every);
      return;
    }
    try {
      const response = await fetch(region.dataset.live, { headers: { Accept: "text/html" } });
      if (response.status === 401) return signInAgain();
      if (response.ok && !region.contains(document.activeElement)) {
        region.innerHTML = await response.text();
        localTimes(region);
        wire(region);
      }
    } catch (error) {
      // The API is restarting: try again at the next tick.
    }
    if (!region.querySelector("[data-live-stop]")) timer = setTimeout(refresh, every);
  }
  region.refresh = () => {
    if (timer) clearTimeout(timer);
    refresh();
  };
  if (!region.querySelector("[data-live-stop]")) timer = setTimeout(refresh, every);
}

function confirmDialog(text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel || "Confirm";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

// Buttons that call the API: data-action (the method), data-path, optional data-confirm. With
// data-forceable (the question), a caution the API answers (409: re-published before, died at
// the delivery limit, its task succeeded since, in doubt) is shown as it says it, and only a yes
// sends the request again with force: a button never overrules what its operator was not shown.
function wireAction(button) {
  button.addEventListener("click", async () => {
    if (button.dataset.confirm && !(await confirmDialog(button.dataset.confirm, button.textContent))) {
      return;
    }
    const label = button.textContent;
    button.disabled = true;
    if (button.dataset.busy) button.textContent = button.dataset.busy;
    try {
      try {
        await api(button.dataset.action, button.dataset.path);
      } catch (error) {
        if (!error.caution || !button.dataset.forceable) throw error;
        if (!(await confirmDialog(error.caution + ". " + button.dataset.forceable, label))) {
          button.disabled = false;
          button.textContent = label;
          return;
        }
        await api(button.dataset.action, button.dataset.path + "?force=true");
      }
      notice(label.replace("…", "") + ": done.", "ok");
      if (button.dataset.done === "reload") setTimeout(() => location.reload(), 400);
      for (const region of document.querySelectorAll("[data-live]")) region.refresh && region.refresh();
    } catch (error) {
      notice(error.message, "bad");
      button.disabled = false;
      button.textContent = label;
    }
  });
}

function wire(root) {
  localTimes(root);
  for (const button of root.querySelectorAll("button[data-action]")) wireAction(button);
}

// Uploads: one request per file, two at a time, each with its own progress bar.
function uploads() {
  const zone = document.getElementById("dropzone");
  if (!zone) return;
  const input = document.getElementById("files");
  const list = document.getElementById("uploads");
  const queue = [];
  let running = 0;

  function next() {
    while (running < 2 && queue.length) {
      running += 1;
      send(queue.shift()).finally(() => {
        running -= 1;
        next();
        const region = document.getElementById("document-list");
        if (region && region.refresh) region.refresh();
      });
    }
  }

  function send(item) {
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/ui/api/documents");
      request.setRequestHeader("X-CSRF-Token", CSRF);
      request.setRequestHeader("Accept", "application/json");
      request.upload.onprogress = (event) => {
        if (event.lengthComputable) item.bar.value = event.loaded / event.total;
      };
      request.onload = () => {
        let answer = null;
        try {
          answer = JSON.parse(request.responseText);
        } catch (error) {
          answer = null;
        }
        if (request.status === 202) {
          item.bar.value = 1;
          item.row.classList.add("accepted");
          item.status.textContent = "";
          const link = document.createElement("a");
          link.href = "/ui/documents/" + answer.document_id;
          link.textContent = answer.duplicate_of ? "accepted (same content as an earlier one)" : "accepted";
          item.status.append(link);
        } else {
          if (request.status === 401) return signInAgain();
          item.row.classList.add("refused");
          item.status.textContent = "refused: " + ((answer && (answer.detail || answer.title)) || request.statusText);
        }
        resolve();
      };
      request.onerror = () => {
        item.row.classList.add("refused");
        item.status.textContent = "not sent: the API did not answer";
        resolve();
      };
      const form = new FormData();
      form.append("file", item.file, item.file.name);
      request.send(form);
    });
  }

  function add(files) {
    for (const file of files) {
      const row = document.createElement("li");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = 0;
      bar.setAttribute("aria-label", "upload of " + file.name);
      const status = document.createElement("span");
      status.className = "upload-status";
      status.setAttribute("role", "status");
      status.textContent = "waiting";
      row.append(name, bar, status);
      list.prepend(row);
      queue.push({ file, row, bar, status });
    }
    next();
  }

  input.addEventListener("change", () => {
    add(input.files);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    add(event.dataTransfer.files);
  });
}

// Search: the API's hits, snippets with their [matches] marked.
async function search() {
  const results = document.getElementById("results");
  if (!results || !results.dataset.search) return;
  results.textContent = "Searching…";
  try {
    const params = new URLSearchParams({ limit: "20", q: results.dataset.search });
    for (const name of ["type", "language", "since"]) {
      if (results.dataset[name]) params.set(name, results.dataset[name]);
    }
    const found = await api("GET", "/search?" + params);
    results.textContent = "";
    if (!found.items.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "Nothing matches. Try fewer words, a prefix (light*), or OR between alternatives.";
      results.append(empty);
      return;
    }
    const list = document.createElement("ol");
    list.className = "hits";
    for (const hit of found.items) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/ui/documents/" + hit.document_id;
      link.textContent = hit.title ? hit.title + " — " + hit.filename : hit.filename;
      const snippet = document.createElement("p");
      snippet.className = "snippet";
      hit.snippet.split(/(\[[^\]]*\])/).forEach((piece) => {
        if (piece.startsWith("[") && piece.endsWith("]")) {
          const mark = document.createElement("mark");
          mark.textContent = piece.slice(1, -1);
          snippet.append(mark);
        } else {
          snippet.append(document.createTextNode(piece));
        }
      });
      item.append(link, snippet);
      list.append(item);
    }
    results.append(list);
    if (found.complete === false) {
      const partial = document.createElement("p");
      partial.className = "note";
      partial.textContent = "More than " + found.window.toLocaleString("en") + " chunks match: these are the best of the newest " + found.window.toLocaleString("en") + ". More words, a phrase or a filter rank every match.";
      results.append(partial);
    }
  } catch (error) {
    results.textContent = "";
    const problem = document.createElement("p");
    problem.className = "problem";
    problem.textContent = error.message;
    results.append(problem);
  }
}

// Redrive: a dry run's count first, then the redrive at a rate, its progress, a cancel.
function redrive(section) {
  const filters = JSON.parse(section.dataset.filters);
  const part = (name) => section.querySelector('[data-redrive="' + name + '"]');
  const start = part("start");
  const cancel = part("cancel");
  let job = null;
  let counted = null;
  const asked = () => ({ ...filters, include_delivery_limit: part("poison").checked });
  // What was counted is what a start takes: a changed choice asks for a count again.
  part("poison").addEventListener("change", () => {
    start.disabled = true;
    part("preview").textContent = "";
  });

  part("dry-run").addEventListener("click", async () => {
    try {
      const preview = await api("POST", "/dead-letters/redrive", { ...asked(), dry_run: true });
      const queues = preview.queues.map((queue) => queue.count + " to " + queue.name).join(", ");
      const why = { delivery_limit: "died at the delivery limit", republished: "re-published before", in_doubt: "in doubt (may have gone out)" };
      const left = preview.left_out.map((count) => count.count + " " + (why[count.name] || count.name)).join(", ");
      part("preview").textContent =
        preview.matched + " letter(s) would be re-published" + (queues ? " (" + queues + ")" : "") +
        (left ? "; left out: " + left : "") + ". Nothing was published.";
      counted = preview.matched;
      start.disabled = preview.matched === 0;
      start.textContent = "Redrive " + preview.matched + " letter(s)";
    } catch (error) {
      part("preview").textContent = error.message;
    }
  });

  async function follow() {
    try {
      job = await api("GET", "/dead-letters/redrives/" + job.id);
    } catch (error) {
      part("progress-text").textContent = error.message;
    }
    const done = job.published + job.failed;
    part("bar").max = Math.max(job.matched, 1);
    part("bar").value = done;
    part("progress-text").textContent =
      job.state + ": " + job.published + " published, " + job.failed + " failed, of " + job.matched +
      (job.last_error ? " — last error: " + job.last_error : "");
    if (job.state === "running" || job.state === "cancelling") {
      setTimeout(follow, 400);
    } else {
      cancel.hidden = true;
      section.classList.add("finished");
    }
  }

  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const rate = Number(part("rate").value) || 50;
      // What was counted, or nothing: letters that died or were handled since are a 409.
      job = await api("POST", "/dead-letters/redrive", { ...asked(), rate, expected: counted });
      part("progress").hidden = false;
      cancel.hidden = false;
      const link = document.createElement("a");
      link.href = "/ui/redrives/" + job.id;
      link.textContent = "its page";
      part("preview").textContent = "Redrive started (" + job.matched + " letters at " + rate + "/s): ";
      part("preview").append(link);
      follow();
    } catch (error) {
      part("preview").textContent = error.message;
      start.disabled = error.status === 409; // count again first
    }
  });

  cancel.addEventListener("click", async () => {
    try {
      job = await api("DELETE", "/dead-letters/redrives/" + job.id);
    } catch (error) {
      notice(error.message, "bad");
    }
  });
}

// Discarding a group: the number it will discard, from a dry run, in the confirmation.
function discardGroup(button) {
  button.addEventListener("click", async () => {
    const group = button.dataset.discardGroup;
    try {
      // Discarding takes the group's every active letter, those that died at the delivery limit too.
      const preview = await api("POST", "/dead-letters/redrive", { group, dry_run: true, include_delivery_limit: true });
      const question =
        "Discard " + preview.matched + " active dead letter(s) of this group? They stay on record as discarded, " +
        "and leave the counts and every redrive.";
      if (!(await confirmDialog(question, "Discard " + preview.matched + " letter(s)"))) return;
      // What was counted, or nothing: letters that died or were handled since are a 409.
      const done = await api(
        "DELETE",
        "/dead-letters/groups/" + encodeURIComponent(group) + "?expected=" + preview.matched,
      );
      notice(
        "Discarded " + done.discarded + " letter(s)." +
          (done.in_doubt ? " " + done.in_doubt + " left as they are: their re-publishing may be under way." : ""),
        "ok",
      );
      setTimeout(() => location.reload(), 600);
    } catch (error) {
      notice(error.message, "bad");
    }
  });
}

// Time filters: the browser's local time in the inputs, UTC in the query string.
function timeFilters() {
  const form = document.getElementById("filters");
  if (!form) return;
  const pad = (n) => String(n).padStart(2, "0");
  for (const input of form.querySelectorAll("input[data-utc-name]")) {
    if (input.dataset.utc) {
      const t = new Date(input.dataset.utc);
      input.value = `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
    }
  }
  form.addEventListener("submit", () => {
    for (const input of form.querySelectorAll("input[data-utc-name]")) {
      if (!input.value) continue;
      const hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = input.dataset.utcName;
      hidden.value = new Date(input.value).toISOString();
      form.append(hidden);
    }
  });
}

// Filters left empty are left out of the URL (the API takes no empty filter).
function quietForms() {
  for (const form of document.querySelectorAll('form[method="get"]')) {
    form.addEventListener("submit", () => {
      for (const field of form.querySelectorAll("input[name], select[name]")) {
        if (!field.value) field.disabled = true;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  wire(document);
  for (const region of document.querySelectorAll("[data-live]")) live(region);
  for (const section of document.querySelectorAll("section.redrive")) redrive(section);
  for (const button of document.querySelectorAll("button[data-discard-group]")) discardGroup(button);
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
  timeFilters();
  quietForms();
  uploads();
  search();
});
