// Streams a chat answer token by token (server-sent events read with fetch) and shows its sources.
// Everything from the model or the PDFs is inserted as text, never as HTML.
(function () {
  "use strict";
  const form = document.getElementById("chat-form");
  if (!form) return;
  const transcript = document.getElementById("transcript");
  const question = document.getElementById("question");
  const state = document.getElementById("chat-state");
  const fileUrlTemplate = form.dataset.fileUrlTemplate;
  let streams = 0;

  function fileUrl(documentId, page) {
    return fileUrlTemplate.replace("/0/", "/" + documentId + "/") + "#page=" + page;
  }

  // Follows a growing answer down, unless the reader scrolled up to read something else.
  function keepInView(change) {
    const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
    change();
    if (atBottom) transcript.scrollTop = transcript.scrollHeight;
  }

  // The sidebar lists the conversation as soon as the server has started it, and marks it as the current one.
  function listConversation(id, title) {
    const aside = document.querySelector(".conversations");
    if (!aside) return;
    let list = aside.querySelector(".conversation-list");
    if (!list) {
      list = document.createElement("ul");
      list.className = "conversation-list";
      const empty = aside.querySelector(".empty");
      if (empty) empty.replaceWith(list); else aside.appendChild(list);
    }
    let item = null;
    for (const li of list.querySelectorAll("li")) {
      li.removeAttribute("aria-current");
      const link = li.querySelector("a");
      if (link && new URLSearchParams(link.search).get("c") === id) item = li;
    }
    if (!item) {
      item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "?c=" + encodeURIComponent(id);
      link.textContent = title;
      item.appendChild(link);
      const deleteTemplate = aside.dataset.deleteUrlTemplate;
      if (deleteTemplate) {
        const remove = document.createElement("form");
        remove.method = "post";
        remove.className = "inline";
        remove.action = deleteTemplate.replace("CONVERSATION", encodeURIComponent(id));
        remove.dataset.confirm = "Delete this conversation?";
        const token = document.createElement("input");
        token.type = "hidden";
        token.name = "csrfmiddlewaretoken";
        token.value = form.elements.csrfmiddlewaretoken.value;
        const button = document.createElement("button");
        button.type = "submit";
        button.className = "link-button danger-link";
        button.textContent = "Delete";
        button.setAttribute("aria-label", "Delete conversation " + title);
        remove.append(token, button);
        item.appendChild(remove);
      }
      list.prepend(item);
    }
    item.setAttribute("aria-current", "true");
  }

  function addTurn(role, text) {
    const item = document.createElement("li");
    item.className = "turn turn-" + role;
    const body = document.createElement("div");
    body.className = "turn-text";
    body.textContent = text;
    item.appendChild(body);
    transcript.appendChild(item);
    transcript.scrollTop = transcript.scrollHeight;
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
    const viewer = document.getElementById("pdf-viewer");
    if (viewer && viewer.dataset.baseSrc === fileUrl(link.dataset.documentId, 1).split("#")[0]) {
      event.preventDefault();
      // Chromium's PDF viewer ignores a change of the fragment alone (#page=1 -> #page=3), even with
      // location.replace: only a new frame opens the document at the cited page.
      const fresh = viewer.cloneNode(false);
      fresh.src = viewer.dataset.baseSrc + "#page=" + link.dataset.page;
      viewer.replaceWith(fresh);
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
            listConversation(data.id, data.title);
          } else if (kind === "sources") {
            turn.sources = data.citations;
          } else if (kind === "token") {
            keepInView(() => { answer.textContent += data.text; });
          } else if (kind === "error") {
            const error = document.createElement("p");
            error.className = "error-text";
            error.textContent = data.message;
            keepInView(() => turn.appendChild(error));
            finished = true;
          } else if (kind === "done") {
            finished = true;
          }
        });
      }
      keepInView(() => showSources(turn, turn.sources || []));
      if (!finished) throw new Error("stream ended early");
    } catch (error) {
      const note = document.createElement("p");
      note.className = "error-text";
      note.textContent = "The answer was interrupted. Check your connection and try again.";
      keepInView(() => turn.appendChild(note));
    } finally {
      turn.classList.remove("streaming");
      streams -= 1;
      state.textContent = streams ? "Answering…" : "";
    }
  });
})();
