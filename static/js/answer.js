// Renders an answer: Markdown (markdown-it with raw HTML off) made safe by DOMPurify's allow-list, [n] markers
// turned into chips for the citations that exist, and the cited passages folded underneath.
// Used for the answer while it streams (re-rendered as tokens arrive) and for stored answers alike.
(function () {
  "use strict";

  const markdown = window.markdownit({ html: false, linkify: false, typographer: false, breaks: false });
  const ALLOWED_TAGS = [
    "p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td", "a",
  ];
  const ALLOWED_ATTRIBUTES = ["href", "title", "start", "align"];
  const MARKER = /\[(\d{1,3})\]/g;

  function pagesLabel(citation) {
    if (citation.location) return citation.location; // a slide, sheet rows or a heading: formats without pages
    const ocr = citation.ocr ? " (scanned)" : "";
    return (citation.page === citation.page_end || !citation.page_end
      ? "p. " + citation.page
      : "pp. " + citation.page + "–" + citation.page_end) + ocr;
  }

  function chip(citation) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip" + (citation.deleted ? " chip-deleted" : "");
    button.dataset.citation = String(citation.number);
    button.textContent = String(citation.number);
    button.title = citation.title + ", " + pagesLabel(citation) + (citation.deleted ? " (deleted)" : "");
    button.setAttribute("aria-label", "Source " + citation.number + ": " + button.title);
    return button;
  }

  // [n] becomes a chip when citation n exists; otherwise it stays as text. Code and links keep their text.
  function addChips(root, byNumber) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode(node) {
        if (node.parentElement.closest("code, pre, a")) return NodeFilter.FILTER_REJECT;
        MARKER.lastIndex = 0;
        return MARKER.test(node.nodeValue) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP;
      },
    });
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const text = node.nodeValue;
      const fragment = document.createDocumentFragment();
      let last = 0, match;
      MARKER.lastIndex = 0;
      while ((match = MARKER.exec(text))) {
        const citation = byNumber.get(Number(match[1]));
        if (!citation) continue;
        fragment.append(text.slice(last, match.index), chip(citation));
        last = match.index + match[0].length;
      }
      if (last === 0) continue;
      fragment.append(text.slice(last));
      node.replaceWith(fragment);
    }
  }

  function renderMarkdown(container, text, citations) {
    // DOMPurify parses and sanitizes in an inert document and hands back nodes: no HTML string reaches the page.
    const scratch = document.createElement("div");
    scratch.append(window.DOMPurify.sanitize(markdown.render(text || ""), {
      ALLOWED_TAGS, ALLOWED_ATTR: ALLOWED_ATTRIBUTES, ALLOW_DATA_ATTR: false, RETURN_DOM_FRAGMENT: true,
    }));
    for (const link of scratch.querySelectorAll("a")) {
      link.target = "_blank";
      link.rel = "noopener noreferrer nofollow";
    }
    for (const table of scratch.querySelectorAll("table")) {
      const wrapper = document.createElement("div");
      wrapper.className = "table-scroll";  // wide tables scroll inside the answer, never the page
      table.replaceWith(wrapper);
      wrapper.appendChild(table);
    }
    addChips(scratch, new Map((citations || []).map((c) => [Number(c.number), c])));
    container.replaceChildren(...scratch.childNodes);
  }

  function excerpt(text, limit) {
    const flat = (text || "").replace(/\s+/g, " ").trim();
    return flat.length <= limit ? flat : flat.slice(0, limit).replace(/\s+\S*$/, "") + " …";
  }

  // The cited passages, folded: the chips in the answer open them in the PDF; this list says what each one is.
  function sourcesBlock(citations) {
    const details = document.createElement("details");
    details.className = "sources";
    const summary = document.createElement("summary");
    summary.textContent = citations.length === 1 ? "1 source" : citations.length + " sources";
    details.appendChild(summary);
    const list = document.createElement("ol");
    list.className = "source-list";
    for (const citation of citations) {
      const item = document.createElement("li");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "source-item" + (citation.deleted ? " source-deleted" : "");
      open.dataset.citation = String(citation.number);
      const head = document.createElement("span");
      head.className = "source-item-head";
      const number = document.createElement("span");
      number.className = "chip chip-static";
      number.textContent = String(citation.number);
      const title = document.createElement("span");
      title.className = "source-item-title";
      title.textContent = citation.title + ", " + pagesLabel(citation);
      head.append(number, title);
      if (citation.deleted) {
        const note = document.createElement("span");
        note.className = "deleted-note";
        note.textContent = "document deleted";
        head.append(note);
      }
      const quote = document.createElement("span");
      quote.className = "source-item-text";
      quote.textContent = excerpt(citation.quote || citation.text, 220);
      open.append(head, quote);
      item.appendChild(open);
      list.appendChild(item);
    }
    details.appendChild(list);
    return details;
  }

  window.SiloAnswer = { renderMarkdown, sourcesBlock, pagesLabel };
})();
