// The side panel: a cited PDF rendered by PDF.js (other formats: their text, see openText) (vendored in static/vendor/pdfjs), opened at the cited page with
// the cited passage highlighted on the page's text layer. PDF.js loads on first use; its worker comes from our
// static files and it never evaluates code from a PDF (isEvalSupported: false, no scripting).
const layout = document.getElementById("chat-layout");
const panel = document.getElementById("source-panel");
const container = document.getElementById("pdf-container");
const viewerElement = document.getElementById("pdf-viewer");
const titleElement = document.getElementById("source-title");
const metaElement = document.getElementById("source-meta");
const statusElement = document.getElementById("source-status");
const passageElement = document.getElementById("source-passage");
const pageLabel = document.getElementById("source-page");
const downloadLink = document.getElementById("source-download");
const HIGHLIGHT_CLASS = "silo-passage";

let libraries = null; // {pdfjs, viewer}
let pdfViewer = null;
let eventBus = null;
let loadedDocumentId = null;
let loadingTask = null;
let target = null; // {documentId, page, passage} waiting for its page's text layer

function fileUrl(documentId) {
  return layout.dataset.fileUrlTemplate.replace("/0/", "/" + documentId + "/");
}

async function loadLibraries() {
  if (libraries) return libraries;
  const pdfjs = await import(layout.dataset.pdfjs);
  globalThis.pdfjsLib = pdfjs; // pdf_viewer.mjs reads the library from here
  pdfjs.GlobalWorkerOptions.workerSrc = layout.dataset.pdfjsWorker;
  const viewer = await import(layout.dataset.pdfjsViewer);
  libraries = { pdfjs, viewer };
  return libraries;
}

function setStatus(text, kind) {
  statusElement.textContent = text || "";
  statusElement.hidden = !text;
  statusElement.className = "source-status" + (kind ? " source-status-" + kind : "");
}

function showPassage(text) {
  // The stored text keeps the PDF's line breaks: join the lines of a paragraph, keep the paragraphs.
  passageElement.textContent = (text || "").replace(/([^\n])\n(?!\n)/g, "$1 ");
  passageElement.hidden = !text;
}

function updatePageLabel() {
  if (!pdfViewer || !pdfViewer.pagesCount) {
    pageLabel.textContent = "";
    return;
  }
  const narrow = window.matchMedia("(max-width: 40rem)").matches;
  pageLabel.textContent = (narrow ? "" : "Page ") + pdfViewer.currentPageNumber + (narrow ? " / " : " of ") +
    pdfViewer.pagesCount;
}

function ensureViewer() {
  if (pdfViewer) return;
  const { viewer } = libraries;
  eventBus = new viewer.EventBus();
  const linkService = new viewer.PDFLinkService({ eventBus });
  pdfViewer = new viewer.PDFViewer({
    container,
    viewer: viewerElement,
    eventBus,
    linkService,
    textLayerMode: 1,
    annotationMode: 1, // links only: no forms, no scripting
    removePageBorders: false,
  });
  linkService.setViewer(pdfViewer);
  eventBus.on("pagesinit", () => {
    pdfViewer.currentScaleValue = "page-width"; // the cited lines readable at once; zoom buttons for more
    if (target) pdfViewer.currentPageNumber = target.page;
    updatePageLabel();
  });
  eventBus.on("pagechanging", updatePageLabel);
  eventBus.on("updateviewarea", updatePageLabel);
  eventBus.on("textlayerrendered", ({ source, pageNumber }) => {
    if (target && pageNumber === target.page) highlight(source, target);
  });
}

// The text layer's text, as one string, with the text node and offset of each piece.
function textLayerText(textLayerDiv) {
  const walker = document.createTreeWalker(textLayerDiv, NodeFilter.SHOW_TEXT);
  const pieces = [];
  let text = "";
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement.closest(".endOfContent")) continue;
    pieces.push({ node, start: text.length, end: text.length + node.nodeValue.length });
    text += node.nodeValue + " ";
  }
  return { text, pieces };
}

function clearHighlights(root) {
  for (const mark of root.querySelectorAll("." + HIGHLIGHT_CLASS)) {
    const parent = mark.parentNode;
    mark.replaceWith(document.createTextNode(mark.textContent));
    parent.normalize();
  }
}

// Wraps the parts of the text layer's nodes that fall within `ranges` in highlight spans.
function wrapRanges(pieces, ranges) {
  const marks = [];
  for (const piece of pieces) {
    const inside = ranges
      .map(([start, end]) => [Math.max(start, piece.start), Math.min(end, piece.end)])
      .filter(([start, end]) => start < end);
    if (!inside.length) continue;
    const text = piece.node.nodeValue;
    const fragment = document.createDocumentFragment();
    let cursor = 0;
    for (const [start, end] of inside) {
      const from = start - piece.start, to = end - piece.start;
      if (from > cursor) fragment.append(text.slice(cursor, from));
      const mark = document.createElement("span");
      mark.className = "highlight appended " + HIGHLIGHT_CLASS;
      mark.textContent = text.slice(from, to);
      fragment.append(mark);
      marks.push(mark);
      cursor = to;
    }
    if (cursor < text.length) fragment.append(text.slice(cursor));
    piece.node.replaceWith(fragment);
  }
  return marks;
}

function highlight(pageView, wanted) {
  const textLayerDiv = pageView.textLayer && pageView.textLayer.div;
  if (!textLayerDiv) return;
  clearHighlights(viewerElement);
  const { text, pieces } = textLayerText(textLayerDiv);
  const found = window.SiloPassage.find(text, wanted.passage);
  const marks = wrapRanges(pieces, found.ranges);
  panel.dataset.highlightedPage = String(wanted.page);
  panel.dataset.highlightCoverage = found.coverage.toFixed(2);
  if (!marks.length && wanted.ocr) {
    // A scanned page has no text layer to mark: what OCR read from it is the passage quoted above the image.
    setStatus("Page " + wanted.page + " is a scanned image; the passage Silo read from it is quoted above.");
    showPassage(wanted.passage);
  } else if (!marks.length) {
    setStatus("The passage could not be located exactly on page " + wanted.page + "; it is quoted above.", "warning");
    showPassage(wanted.passage);
  } else {
    setStatus("");
    // Bring the first highlighted line into view, a little below the panel's top edge.
    const first = marks[0].getBoundingClientRect();
    const box = container.getBoundingClientRect();
    container.scrollTop += first.top - box.top - container.clientHeight * 0.25;
  }
  target = null;
}

function openPanel() {
  panel.hidden = false;
  layout.classList.add("source-open");
}

function closePanel() {
  panel.hidden = true;
  layout.classList.remove("source-open");
  for (const active of document.querySelectorAll(".chip.active, .source-item.active")) active.classList.remove("active");
}

// Whether the document's file is still there (it may have been deleted in another tab since it was loaded): the
// answer's status is enough, the body is not read.
async function stillThere(documentId) {
  const controller = new AbortController();
  try {
    const response = await fetch(fileUrl(documentId), { signal: controller.signal, cache: "no-store" });
    return response.status !== 404;
  } catch (error) {
    return true; // offline: keep showing what is loaded
  } finally {
    controller.abort();
  }
}

async function loadDocument(documentId) {
  if (loadedDocumentId === documentId && pdfViewer && pdfViewer.pdfDocument) {
    return (await stillThere(documentId)) ? true : "deleted";
  }
  const { pdfjs } = libraries;
  ensureViewer();
  if (loadingTask) loadingTask.destroy();
  const assets = layout.dataset.pdfjsAssets;
  loadingTask = pdfjs.getDocument({
    url: fileUrl(documentId),
    isEvalSupported: false,
    enableXfa: false,
    cMapUrl: assets + "cmaps/",
    cMapPacked: true,
    standardFontDataUrl: assets + "standard_fonts/",
    wasmUrl: assets + "wasm/",
    iccUrl: assets + "iccs/",
  });
  try {
    const pdfDocument = await loadingTask.promise;
    pdfViewer.setDocument(pdfDocument);
    pdfViewer.linkService.setDocument(pdfDocument);
    loadedDocumentId = documentId;
    return true;
  } catch (error) {
    loadedDocumentId = null;
    pdfViewer.setDocument(null);
    if (error && error.status === 404) return "deleted";
    throw error;
  }
}

// -- sources without pages: the document's text units, shown as text (never as HTML), the cited one highlighted --

const textContainer = document.getElementById("text-container");
let loadedText = null; // {documentId, units}

function textUrl(documentId) {
  return layout.dataset.textUrlTemplate.replace("/0/", "/" + documentId + "/");
}

function showTextMode(on) {
  panel.classList.toggle("text-mode", on);
  textContainer.hidden = !on;
  container.hidden = on;
}

async function loadText(documentId) {
  if (loadedText && loadedText.documentId === documentId) return loadedText;
  const response = await fetch(textUrl(documentId), { headers: { Accept: "application/json" }, cache: "no-store" });
  if (response.status === 404) return "deleted";
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || "The document's text could not be read.");
  textContainer.replaceChildren();
  for (const unit of body.units) {
    const section = document.createElement("section");
    section.className = "text-unit" + (unit.table ? " text-unit-table" : "");
    section.dataset.number = String(unit.number);
    const heading = document.createElement("h3");
    heading.className = "text-unit-location";
    heading.textContent = unit.location;
    const text = document.createElement("p");
    text.className = "text-unit-body";
    text.textContent = unit.text;
    section.append(heading, text);
    textContainer.append(section);
  }
  loadedText = { documentId, units: body.units };
  return loadedText;
}

// Highlights the passage in the best-matching unit among those numbered first..last; returns that unit.
function highlightText(first, last, passage) {
  clearHighlights(textContainer);
  for (const cited of textContainer.querySelectorAll(".text-unit.cited")) cited.classList.remove("cited");
  let best = null;
  for (const section of textContainer.querySelectorAll(".text-unit")) {
    const number = Number(section.dataset.number);
    if (number < first || number > last) continue;
    const body = section.querySelector(".text-unit-body");
    const found = passage ? window.SiloPassage.find(body.textContent, passage) : { ranges: [], coverage: 0 };
    if (!best || found.coverage > best.found.coverage) best = { section, body, found };
  }
  if (!best) return null;
  best.section.classList.add("cited");
  const node = best.body.firstChild;
  const marks = node ? wrapRanges([{ node, start: 0, end: node.nodeValue.length }], best.found.ranges) : [];
  panel.dataset.highlightCoverage = best.found.coverage.toFixed(2);
  const anchor = marks[0] || best.section;
  const box = textContainer.getBoundingClientRect();
  textContainer.scrollTop += anchor.getBoundingClientRect().top - box.top - textContainer.clientHeight * 0.2;
  return { section: best.section, marks };
}

async function openText(citation, documentId, page, passage) {
  setStatus("Opening the document…");
  showTextMode(true);
  try {
    const loaded = await loadText(documentId);
    if (loaded === "deleted") return showDeleted(citation);
    setStatus("");
    const last = Math.max(page, Number(citation.page_end) || page);
    const shown = highlightText(page, last, passage);
    pageLabel.textContent = citation.location || "";
    if (shown) panel.dataset.highlightedPage = String(shown.section.dataset.number);
    if (passage && shown && !shown.marks.length) {
      setStatus("The passage could not be located exactly; it is quoted above.", "warning");
      showPassage(passage);
    }
  } catch (error) {
    console.warn("text viewer:", error);
    setStatus("This document could not be shown. The cited passage is quoted above.", "error");
    showPassage(passage);
  }
}

function isTextSource(citation) {
  if (citation.whole) return Boolean(citation.format) && citation.format !== "pdf";
  return Boolean(citation.location);
}

// Opens a citation ({document_id, title, page, quote, text, deleted}), or a whole document ({whole: true}).
async function open(citation) {
  const documentId = Number(citation.document_id);
  const page = Math.max(1, Number(citation.page) || 1);
  const passage = citation.whole ? "" : citation.quote || citation.text || "";
  openPanel();
  titleElement.textContent = citation.title || "Document";
  metaElement.textContent = citation.whole ? "" : "Source " + citation.number + " · " + window.SiloAnswer.pagesLabel(citation);
  downloadLink.href = fileUrl(documentId) + "#page=" + page;
  downloadLink.hidden = Boolean(citation.deleted);
  showPassage("");
  panel.dataset.documentId = String(documentId);
  panel.dataset.page = String(page);
  delete panel.dataset.highlightedPage;
  if (citation.deleted) return showDeleted(citation);
  panel.classList.remove("without-document");
  if (isTextSource(citation)) {
    downloadLink.href = fileUrl(documentId);
    return openText(citation, documentId, page, passage);
  }
  showTextMode(false);
  setStatus("Opening the PDF…");
  try {
    await loadLibraries();
    target = passage ? { documentId, page, passage, ocr: Boolean(citation.ocr) } : null;
    const loaded = await loadDocument(documentId);
    if (loaded === "deleted") return showDeleted(citation);
    viewerElement.hidden = false;
    if (!passage) setStatus("");
    if (pdfViewer.pagesCount) {
      pdfViewer.currentPageNumber = Math.min(page, pdfViewer.pagesCount);
      // The page may already be rendered (same document, same page): highlight now rather than wait.
      const pageView = pdfViewer.getPageView(page - 1);
      if (target && pageView && pageView.textLayer && pageView.textLayer.div &&
          pageView.textLayer.div.childElementCount) {
        highlight(pageView, target);
      }
    }
    updatePageLabel();
  } catch (error) {
    console.warn("PDF viewer:", error);
    setStatus("This PDF could not be shown. The cited passage is quoted above.", "error");
    showPassage(passage);
  }
}

function showDeleted(citation) {
  panel.classList.add("without-document");
  showTextMode(false);
  loadedText = null;
  if (pdfViewer) pdfViewer.setDocument(null);
  loadedDocumentId = null;
  viewerElement.hidden = true;
  downloadLink.hidden = true;
  pageLabel.textContent = "";
  setStatus("“" + (citation.title || "This document") + "” has been deleted, so its PDF can no longer be shown. " +
    "The passage this answer cited is quoted below.", "deleted");
  showPassage(citation.quote || citation.text || "");
}

document.getElementById("source-close").addEventListener("click", closePanel);
document.getElementById("source-prev").addEventListener("click", () => {
  if (pdfViewer && pdfViewer.currentPageNumber > 1) pdfViewer.currentPageNumber -= 1;
});
document.getElementById("source-next").addEventListener("click", () => {
  if (pdfViewer && pdfViewer.currentPageNumber < pdfViewer.pagesCount) pdfViewer.currentPageNumber += 1;
});
document.getElementById("source-zoom-in").addEventListener("click", () => {
  if (pdfViewer && pdfViewer.pdfDocument) pdfViewer.currentScale = Math.min(pdfViewer.currentScale * 1.2, 4);
});
document.getElementById("source-zoom-out").addEventListener("click", () => {
  if (pdfViewer && pdfViewer.pdfDocument) pdfViewer.currentScale = Math.max(pdfViewer.currentScale / 1.2, 0.3);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !panel.hidden && window.matchMedia("(max-width: 64rem)").matches) closePanel();
});

window.SiloSources = { open, close: closePanel };
if (window.__siloPendingSource) {
  open(window.__siloPendingSource);
  window.__siloPendingSource = null;
} else if (layout.dataset.documentId && !window.matchMedia("(max-width: 64rem)").matches) {
  // A document's own chat shows the document beside it from the start (on wide screens).
  open({ document_id: layout.dataset.documentId, title: layout.dataset.documentTitle, page: 1, whole: true,
    format: layout.dataset.documentFormat });
} else {
  closePanel();
}
