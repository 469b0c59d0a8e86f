// The chat: streams an answer token by token (server-sent events read with fetch), renders it as it grows, lets the
// reader stop it, copy it and open its sources in the side panel. Text from the model or the PDFs only ever enters
// the page as text, or as Markdown through answer.js (sanitized).
(function () {
  "use strict";
  const form = document.getElementById("chat-form");
  if (!form) return;
  const layout = document.getElementById("chat-layout");
  const transcript = document.getElementById("transcript");
  const scroller = document.getElementById("transcript-scroll");
  const question = document.getElementById("question");
  const askButton = document.getElementById("ask-button");
  const stopButton = document.getElementById("stop-button");
  const state = document.getElementById("chat-state");
  const counter = document.getElementById("question-count");
  const maxChars = Number(form.dataset.maxChars);
  const numberFormat = new Intl.NumberFormat("en-US");
  let streaming = null;  // {controller, turn} while an answer streams

  // --- the question box -----------------------------------------------------------------------------------------

  function autosize() {
    question.style.height = "auto";
    question.style.height = Math.min(question.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }

  // The limit is shown, never enforced by cutting the text: a pasted question stays whole and says how much to trim.
  function updateCounter() {
    const length = question.value.trim().length;
    const over = length - maxChars;
    // Counted as the server counts: without the spaces around the question.
    counter.textContent = numberFormat.format(length) + " / " + numberFormat.format(maxChars);
    counter.classList.toggle("over", over > 0);
    counter.classList.toggle("near", over <= 0 && length > maxChars * 0.9);
    if (over > 0) {
      counter.textContent += " · " + numberFormat.format(over) + (over === 1 ? " character" : " characters") + " too long";
    }
    askButton.disabled = question.disabled || over > 0 || length === 0;
  }

  question.addEventListener("input", () => { autosize(); updateCounter(); });
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (streaming) {
        state.textContent = "Wait for this answer to finish, or stop it, to send the next question.";
        return;
      }
      if (!askButton.disabled) form.requestSubmit();
    }
  });

  // --- the transcript ---------------------------------------------------------------------------------------------

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 64;
  }

  // Follows a growing answer down, unless the reader scrolled up to read something else.
  function keepInView(change) {
    const follow = nearBottom();
    change();
    if (follow) scroller.scrollTop = scroller.scrollHeight;
  }

  function addTurn(role, text) {
    const item = document.createElement("li");
    item.className = "turn turn-" + role;
    const body = document.createElement("div");
    body.className = "turn-text" + (role === "assistant" ? " markdown" : "");
    body.textContent = text;
    item.appendChild(body);
    transcript.appendChild(item);
    scroller.scrollTop = scroller.scrollHeight;
    return item;
  }

  function copyText(turn) {
    const citations = turn.citations || [];
    let text = turn.answerText || "";
    if (citations.length) {
      text += "\n\nSources:\n" + citations.map((c) => "[" + c.number + "] " + c.title + ", " +
        window.SiloAnswer.pagesLabel(c)).join("\n");
    }
    return text;
  }

  async function copy(turn, button) {
    const text = copyText(turn);
    try {
      await navigator.clipboard.writeText(text);
    } catch (error) {
      // Older browsers, or no permission: the selection way still works on a user's click.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1600);
  }

  // Copy, and the folded sources, under a finished answer.
  function finishTurn(turn) {
    turn.querySelector(".turn-footer")?.remove();
    turn.querySelector("details.sources")?.remove();
    const citations = turn.citations || [];
    if (citations.length) turn.appendChild(window.SiloAnswer.sourcesBlock(citations));
    if (!turn.answerText) return;
    const footer = document.createElement("div");
    footer.className = "turn-footer";
    const copyButton = document.createElement("button");
    copyButton.type = "button";
    copyButton.className = "text-button copy-button";
    copyButton.textContent = "Copy";
    copyButton.setAttribute("aria-label", "Copy this answer");
    copyButton.addEventListener("click", () => copy(turn, copyButton));
    footer.appendChild(copyButton);
    turn.appendChild(footer);
  }

  function renderAnswer(turn) {
    window.SiloAnswer.renderMarkdown(turn.querySelector(".turn-text"), turn.answerText, turn.citations);
  }

  function markNotFound(turn) {
    turn.classList.add("not-found");
    const hint = document.createElement("p");
    hint.className = "not-found-hint";
    hint.textContent = "Nothing in " + (layout.dataset.documentId ? "this document" : "your documents") +
      " answers this. Try other words, or ask about something the documents cover.";
    turn.insertBefore(hint, turn.querySelector(".turn-footer"));
  }

  // Stored answers arrive as Markdown text with their citations: render them the same way as a live one.
  for (const body of transcript.querySelectorAll("[data-markdown]")) {
    const turn = body.closest(".turn");
    turn.answerText = body.textContent;
    try { turn.citations = JSON.parse(body.dataset.citations || "[]"); } catch (error) { turn.citations = []; }
    renderAnswer(turn);
    finishTurn(turn);
  }
  scroller.scrollTop = scroller.scrollHeight;

  // --- sources ---------------------------------------------------------------------------------------------------

  function openSource(citation) {
    const detail = Object.assign({}, citation);
    if (window.SiloSources) window.SiloSources.open(detail);
    else window.__siloPendingSource = detail;  // the panel's module is still loading: it opens this when ready
  }

  transcript.addEventListener("click", (event) => {
    const trigger = event.target.closest("[data-citation]");
    if (!trigger || trigger.classList.contains("chip-static")) return;
    const turn = trigger.closest(".turn");
    const citation = (turn.citations || []).find((c) => String(c.number) === trigger.dataset.citation);
    if (!citation) return;
    event.preventDefault();
    for (const active of document.querySelectorAll(".chip.active, .source-item.active")) active.classList.remove("active");
    trigger.classList.add("active");
    openSource(citation);
  });

  const showDocument = document.getElementById("show-document");
  if (showDocument) {
    showDocument.addEventListener("click", () => openSource({
      document_id: Number(layout.dataset.documentId), title: layout.dataset.documentTitle, page: 1, page_end: 1,
      text: "", quote: "", whole: true, format: layout.dataset.documentFormat,
    }));
  }

  // --- starter questions -----------------------------------------------------------------------------------------

  const starters = document.getElementById("starters");
  if (starters) {
    starters.addEventListener("click", (event) => {
      const starter = event.target.closest("button.starter");
      if (!starter || streaming) return;
      question.value = starter.dataset.question;
      updateCounter();
      form.requestSubmit();
    });
  }

  // --- the conversations drawer (phones) -------------------------------------------------------------------------

  const drawer = document.getElementById("conversations");
  const drawerOpen = document.getElementById("drawer-open");
  const backdrop = document.querySelector(".drawer-backdrop");
  function setDrawer(open) {
    layout.classList.toggle("drawer-is-open", open);
    drawerOpen.setAttribute("aria-expanded", String(open));
    backdrop.hidden = !open;
    if (open) drawer.querySelector("a, button")?.focus();
  }
  drawerOpen.addEventListener("click", () => setDrawer(true));
  for (const closer of document.querySelectorAll("[data-drawer-close]")) {
    closer.addEventListener("click", () => setDrawer(false));
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && layout.classList.contains("drawer-is-open")) setDrawer(false);
  });

  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // The list shows the conversation as soon as the server has started it, and marks it as the current one.
  function listConversation(id, title) {
    const list = drawer.querySelector(".conversation-list");
    list.hidden = false;
    drawer.querySelector(".conversations-empty").hidden = true;
    let item = null;
    for (const li of list.querySelectorAll("li")) {
      li.removeAttribute("aria-current");
      const link = li.querySelector("a");
      if (link && new URLSearchParams(link.search).get("c") === id) item = li;
    }
    if (!item) {
      item = document.createElement("li");
      const link = document.createElement("a");
      link.className = "conversation-link";
      link.href = "?c=" + encodeURIComponent(id);
      const titleEl = document.createElement("span");
      titleEl.className = "conversation-title";
      titleEl.textContent = title;
      const meta = document.createElement("span");
      meta.className = "conversation-meta";
      const now = new Date();
      const time = document.createElement("time");
      time.dateTime = now.toISOString();
      time.textContent = "Just now";
      meta.append(time, layout.dataset.documentId ? "" : " · All documents");
      link.append(titleEl, meta);
      item.appendChild(link);
      const remove = document.createElement("form");
      remove.method = "post";
      remove.className = "inline";
      remove.action = drawer.dataset.deleteUrlTemplate.replace("CONVERSATION", encodeURIComponent(id));
      remove.dataset.confirm = "Delete this conversation?";
      const token = document.createElement("input");
      token.type = "hidden";
      token.name = "csrfmiddlewaretoken";
      token.value = form.elements.csrfmiddlewaretoken.value;
      const button = document.createElement("button");
      button.type = "submit";
      button.className = "icon-button danger-link";
      button.title = "Delete";
      button.append(document.getElementById("icon-trash").content.cloneNode(true));
      button.setAttribute("aria-label", "Delete conversation " + title);
      remove.append(token, button);
      item.appendChild(remove);
      list.prepend(item);
    }
    item.setAttribute("aria-current", "true");
    document.getElementById("chat-heading").textContent = title;
  }

  // --- streaming ---------------------------------------------------------------------------------------------------

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

  function setStreaming(active) {
    stopButton.hidden = !active;
    askButton.hidden = active;
    state.textContent = active ? "Answering…" : "";
    if (!active) updateCounter();
  }

  function turnNote(turn, text, className) {
    const note = document.createElement("p");
    note.className = className;
    note.textContent = text;
    keepInView(() => turn.appendChild(note));
  }

  stopButton.addEventListener("click", () => {
    if (streaming) streaming.controller.abort();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text || streaming || text.length > maxChars) return;
    const body = new FormData(form);
    question.value = "";  // the box stays usable while the answer streams
    autosize();
    if (starters) starters.remove();
    addTurn("user", text);
    const turn = addTurn("assistant", "");
    turn.classList.add("streaming");
    turn.answerText = "";
    turn.citations = [];
    const controller = new AbortController();
    streaming = { controller, turn };
    setStreaming(true);
    let pending = false;
    const render = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; keepInView(() => renderAnswer(turn)); });
    };
    let finished = false, found = true;
    try {
      const response = await fetch(form.action, {
        method: "POST", body, signal: controller.signal,
        headers: { "X-CSRFToken": body.get("csrfmiddlewaretoken"), Accept: "text/event-stream" },
      });
      if (response.status === 429) {  // a limit (answers at once, questions a minute): the server says which
        const refusal = await response.json();
        turnNote(turn, refusal.error, "error-text");
        finished = true;
        return;
      }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
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
            turn.citations = data.citations || [];
          } else if (kind === "token") {
            turn.answerText += data.text;
            render();
          } else if (kind === "error") {
            turnNote(turn, data.message, "error-text");
            finished = true;
          } else if (kind === "done") {
            finished = true;
            // `found: false`: nothing relevant in the documents. Before servers sent the flag, no citations meant
            // the same thing.
            found = data.found === undefined ? turn.citations.length > 0 : data.found !== false;
          }
        });
      }
      if (!finished) throw new Error("stream ended early");
    } catch (error) {
      if (controller.signal.aborted) turnNote(turn, "Stopped.", "stopped-note");
      else turnNote(turn, "The answer was interrupted. Check your connection and try again.", "error-text");
    } finally {
      streaming = null;
      turn.classList.remove("streaming");
      keepInView(() => {
        renderAnswer(turn);
        finishTurn(turn);
        if (!found) markNotFound(turn);
      });
      setStreaming(false);
    }
  });

  autosize();
  updateCounter();
})();
