// Streams a chat answer token by token (server-sent events read with fetch) and shows its sources.
// Everything from the model or the PDFs is inserted as text, never as HTML.
(function () {
  "use strict";
  const form = document.getElementById("chat-form");
  if (!form) return;
  const transcript = document.getElementById("transcript");
  const question = document.getElementById("question");
  const state = document.getElementById("chat-state");
  const viewer = document.getElementById("pdf-viewer");
  const fileUrlTemplate = form.dataset.fileUrlTemplate;
  let streams = 0;

  function fileUrl(documentId, page) {
    return fileUrlTemplate.replace("/0/", "/" + documentId + "/") + "#page=" + page;
  }

  function addTurn(role, text) {
    const item = document.createElement("li");
    item.className = "turn turn-" + role;
    const body = document.createElement("div");
    body.className = "turn-text";
    body.textContent = text;
    item.appendChild(body);
    transcript.appendChild(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function showSources(turn, citations) {
    if (!citations.length) return;
    const list = document.createElement("ol");
    list.className = "sources";
    for (const c of citations) {
      const li = document.createElement("li");
      const link = document.createElement("a");
      link.className = "citation";
      link.href = fileUrl(c.document_id, c.page);
      link.dataset.documentId = c.document_id;
      link.dataset.page = c.page;
      const pages = c.page === c.page_end ? "p. " + c.page : "p. " + c.page + "–" + c.page_end;
      link.textContent = "[" + c.number + "] " + c.title + ", " + pages;
      li.appendChild(link);
      list.appendChild(li);
    }
    turn.appendChild(list);
  }

  // Citations open the PDF at their page: in the viewer beside the chat when it shows that document.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.citation");
    if (!link) return;
    if (viewer && viewer.dataset.baseSrc === fileUrl(link.dataset.documentId, 1).split("#")[0]) {
      event.preventDefault();
      viewer.src = viewer.dataset.baseSrc + "#page=" + link.dataset.page;
      // Browsers keep the old page when only the fragment changes: reload the frame at the new page.
      viewer.contentWindow && viewer.contentWindow.location.replace(viewer.src);
    } else {
      link.target = "_blank";
      link.rel = "noopener";
    }
  });

  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  function parseEvents(buffer, onEvent) {
    let index;
    while ((index = buffer.indexOf("\n\n")) !== -1) {
      const raw = buffer.slice(0, index);
      buffer = buffer.slice(index + 2);
      let kind = "message", data = "";
      for (const line of raw.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(kind, data ? JSON.parse(data) : {});
    }
    return buffer;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text) return;
    const body = new FormData(form);
    question.value = "";  // the box stays usable while the answer streams
    addTurn("user", text);
    const turn = addTurn("assistant", "");
    turn.classList.add("streaming");
    const answer = turn.querySelector(".turn-text");
    streams += 1;
    state.textContent = "Answering…";
    try {
      const response = await fetch(form.action, {
        method: "POST", body, headers: { "X-CSRFToken": body.get("csrfmiddlewaretoken"), Accept: "text/event-stream" },
      });
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "", finished = false;
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + value, (kind, data) => {
          if (kind === "conversation") {
            form.elements.conversation.value = data.id;
            const url = new URL(window.location.href);
            url.searchParams.set("c", data.id);
            window.history.replaceState(null, "", url);
          } else if (kind === "sources") {
            turn.sources = data.citations;
          } else if (kind === "token") {
            answer.textContent += data.text;
          } else if (kind === "error") {
            const error = document.createElement("p");
            error.className = "error-text";
            error.textContent = data.message;
            turn.appendChild(error);
            finished = true;
          } else if (kind === "done") {
            finished = true;
          }
        });
      }
      showSources(turn, turn.sources || []);
      if (!finished) throw new Error("stream ended early");
    } catch (error) {
      const note = document.createElement("p");
      note.className = "error-text";
      note.textContent = "The answer was interrupted. Check your connection and try again.";
      turn.appendChild(note);
    } finally {
      turn.classList.remove("streaming");
      streams -= 1;
      state.textContent = streams ? "Answering…" : "";
    }
  });
})();
