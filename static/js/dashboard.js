// Documents: upload (button or drop anywhere on the page) and live ingest progress without reloading the page.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const table = document.getElementById("documents");
  if (!table) return;
  let timer = null;
  // Viewers have no upload control: the page still follows the documents' progress.
  if (form) uploads();

  function uploads() {
  const input = document.getElementById("upload-files");
  const feedback = document.getElementById("upload-feedback");
  const overlay = document.getElementById("dropzone-overlay");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  let dragDepth = 0;

  // One request per file: the server refuses a request body larger than one upload (413) before reading it.
  async function uploadOne(file) {
    const body = new FormData();
    body.append("files", file);
    const response = await fetch(form.action, {
      method: "POST", body, headers: { "X-CSRFToken": csrf, Accept: "application/json" },
    });
    if (response.status === 413) {
      return { documents: [], errors: [file.name + ": this file is larger than Silo accepts."] };
    }
    return response.json();
  }

  async function upload(files) {
    const pdfs = Array.from(files || []);
    if (!pdfs.length) return;
    feedback.textContent = "Uploading " + (pdfs.length === 1 ? "“" + pdfs[0].name + "”" : pdfs.length + " files") + "…";
    try {
      let uploaded = 0;
      const errors = [];
      for (const file of pdfs) {
        const data = await uploadOne(file);
        uploaded += data.documents.length;
        errors.push(...data.errors);
      }
      const parts = [];
      if (uploaded) parts.push("Uploaded " + uploaded + " file(s).");
      parts.push(...errors);
      feedback.textContent = parts.join(" ");
      if (uploaded) window.location.reload();
    } catch (error) {
      feedback.textContent = "The upload failed; check your connection and try again.";
    }
    input.value = "";
  }

  input.addEventListener("change", () => upload(input.files));
  // The whole page is a drop target; the overlay says so while files are dragged over it.
  const carriesFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    overlay.hidden = false;
  });
  document.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) overlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    overlay.hidden = true;
    upload(event.dataTransfer.files);
  });
  }

  document.addEventListener("submit", (event) => {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  function render(row, data) {
    const status = row.querySelector("[data-field=status]");
    status.textContent = data.label;
    status.className = "status status-" + data.status;
    const detail = row.querySelector("[data-field=detail]");
    detail.textContent = data.detail;
    detail.hidden = !data.detail;
    const progress = row.querySelector("[data-field=progress]");
    progress.value = data.progress;
    progress.hidden = !data.busy;
    const error = row.querySelector("[data-field=error]");
    error.textContent = data.error;
    error.hidden = !data.error;
    const formatNames = { docx: "Word", pptx: "PowerPoint", xlsx: "Excel", csv: "CSV", html: "HTML", markdown: "Markdown", text: "Text" };
    if (data.format && data.format !== "pdf") row.querySelector("[data-field=facts]").textContent = formatNames[data.format] || data.format;
    else if (data.pages) row.querySelector("[data-field=facts]").textContent = data.pages + (data.pages === 1 ? " page" : " pages");
    row.dataset.busy = data.busy ? "true" : "false";
    // A document that has just become ready can be opened at once, without reloading the page.
    const actions = row.querySelector(".document-actions");
    const chat = actions.querySelector("[data-action=chat]");
    const title = row.querySelector(".document-title");
    if (data.status === "ready" && !chat) {
      const link = document.createElement("a");
      link.href = row.dataset.chatUrl;
      link.className = "button button-small";
      link.dataset.action = "chat";
      link.textContent = "Open and chat";
      actions.prepend(link);
      if (title.tagName !== "A") {
        const titleLink = document.createElement("a");
        titleLink.className = "document-title";
        titleLink.href = row.dataset.chatUrl;
        titleLink.textContent = title.textContent;
        title.replaceWith(titleLink);
      }
    } else if (data.status !== "ready" && chat) {
      chat.remove();
    }
  }

  async function poll() {
    timer = null;
    try {
      const response = await fetch(table.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        for (const doc of data.documents) {
          const row = table.querySelector('[data-document-id="' + doc.id + '"]');
          if (row) render(row, doc);
        }
      }
    } catch (error) { /* keep polling */ }
    schedule();
  }

  function schedule() {
    if (!timer && table.querySelector('[data-busy="true"]')) timer = setTimeout(poll, 1000);
  }
  schedule();
})();
