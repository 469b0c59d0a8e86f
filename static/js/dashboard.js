// Keeps the database status on the dashboard live while it is being provisioned.
(function () {
  "use strict";
  const card = document.getElementById("database-card");
  if (!card) return;
  const statusEl = document.getElementById("database-status");
  const facts = document.getElementById("database-facts");
  const errorEl = document.getElementById("database-error");
  const retry = document.getElementById("database-retry");
  let delay = 1000;

  function render(data) {
    statusEl.textContent = data.label;
    statusEl.className = "status status-" + data.status;
    facts.hidden = data.status !== "ready";
    for (const el of facts.querySelectorAll("[data-fact]")) {
      el.textContent = data[el.dataset.fact] || "";
    }
    errorEl.textContent = data.error || "";
    errorEl.hidden = !data.error;
    retry.hidden = !data.can_retry;
  }

  async function poll() {
    try {
      const response = await fetch(card.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        render(data);
        if (!data.busy) return;
      }
    } catch (error) {
      // Network hiccup: keep polling, a little slower.
    }
    delay = Math.min(delay * 1.5, 10000);
    setTimeout(poll, delay);
  }

  if (card.dataset.busy === "true") setTimeout(poll, delay);
})();

// Documents: drag-and-drop upload and live ingest progress without reloading the page.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const list = document.getElementById("documents");
  if (!form || !list) return;
  const input = document.getElementById("upload-files");
  const feedback = document.getElementById("upload-feedback");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const labels = { queued: "Queued", parsing: "Parsing", embedding: "Embedding", ready: "Ready", failed: "Failed" };
  let timer = null;

  async function upload(files) {
    if (!files.length) return;
    const body = new FormData();
    for (const file of files) body.append("files", file);
    feedback.textContent = "Uploading " + files.length + " file(s)…";
    try {
      const response = await fetch(form.action, {
        method: "POST", body, headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      });
      const data = await response.json();
      const parts = [];
      if (data.documents.length) parts.push("Uploaded " + data.documents.length + " file(s).");
      for (const error of data.errors) parts.push(error);
      feedback.textContent = parts.join(" ");
      if (data.documents.length) window.location.reload();
    } catch (error) {
      feedback.textContent = "The upload failed; check your connection and try again.";
    }
  }

  input.addEventListener("change", () => upload(input.files));
  for (const type of ["dragenter", "dragover"]) {
    form.addEventListener(type, (event) => { event.preventDefault(); form.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    form.addEventListener(type, () => form.classList.remove("dragging"));
  }
  form.addEventListener("drop", (event) => { event.preventDefault(); upload(event.dataTransfer.files); });

  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  function render(item, data) {
    const status = item.querySelector("[data-field=status]");
    status.textContent = labels[data.status] || data.status;
    status.className = "status status-" + data.status;
    const progress = item.querySelector("[data-field=progress]");
    progress.value = data.progress;
    progress.hidden = !data.busy;
    const error = item.querySelector("[data-field=error]");
    error.textContent = data.error;
    error.hidden = !data.error;
    const facts = [];
    if (data.pages) facts.push(data.pages + (data.pages === 1 ? " page" : " pages"));
    if (data.chunks) facts.push(data.chunks + " chunks");
    item.querySelector("[data-field=facts]").textContent = facts.join(" · ");
    item.dataset.busy = data.busy ? "true" : "false";
    // A document that has just become ready can be opened at once, without reloading the page.
    const actions = item.querySelector(".document-actions");
    const chat = actions.querySelector("[data-action=chat]");
    if (data.status === "ready" && !chat) {
      const link = document.createElement("a");
      link.href = item.dataset.chatUrl;
      link.dataset.action = "chat";
      link.textContent = "Open and chat";
      actions.prepend(link);
    } else if (data.status !== "ready" && chat) {
      chat.remove();
    }
  }

  async function poll() {
    timer = null;
    try {
      const response = await fetch(list.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        for (const doc of data.documents) {
          const item = list.querySelector('[data-document-id="' + doc.id + '"]');
          if (item) render(item, doc);
        }
      }
    } catch (error) { /* keep polling */ }
    schedule();
  }

  function schedule() {
    if (!timer && list.querySelector('[data-busy="true"]')) timer = setTimeout(poll, 1000);
  }
  schedule();
})();
