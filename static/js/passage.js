// Finds a cited passage in a PDF page's text, as PDF.js extracted it, although the two texts never agree exactly:
// the stored chunk came from another extractor, with other line breaks, spaces, hyphenation ("encod-\ning"),
// ligatures (ﬁ), quotes and dashes. Both sides are compared as letters and digits only, lower-cased, without
// accents; a match maps back to character offsets of the page's own text.
(function () {
  "use strict";

  const WORD_CHARACTER = /[\p{L}\p{N}]/u;
  const MARKS = /\p{M}/gu;
  // Below this many letters and digits a piece of a sentence matches too many places to mean anything.
  const MIN_PIECE = 12;
  const MIN_PARTIAL = 20;

  // The letters and digits of `text`, with the offset in `text` that each came from.
  function normalize(text) {
    let letters = "";
    const offsets = [];
    for (let index = 0; index < text.length; index++) {
      const code = text.codePointAt(index);
      const character = String.fromCodePoint(code);
      const width = character.length;
      const plain = character.normalize("NFKD").replace(MARKS, "").toLowerCase();
      for (const piece of plain) {
        if (WORD_CHARACTER.test(piece)) {
          letters += piece;
          offsets.push(index);
        }
      }
      index += width - 1;
    }
    return { letters, offsets, source: text };
  }

  function longestFound(haystack, needle, fromEnd) {
    // Binary search on the length: if a prefix (or suffix) occurs, every shorter one does.
    const cut = (length) => (fromEnd ? needle.slice(needle.length - length) : needle.slice(0, length));
    let low = 0, high = needle.length;
    while (low < high) {
      const middle = Math.floor((low + high + 1) / 2);
      if (haystack.indexOf(cut(middle)) >= 0) low = middle; else high = middle - 1;
    }
    return low ? { start: haystack.indexOf(cut(low)), length: low } : null;
  }

  function pieces(passage) {
    // Sentences, and lines where there are no sentences: the order of text runs on a page (columns, footnotes) can
    // differ between extractors, so a passage that is not found whole is looked for piece by piece.
    return passage.split(/(?<=[.!?;:])\s+|\n{2,}/u).map((piece) => piece.trim()).filter(Boolean);
  }

  // A match ends at its last letter or digit: take the punctuation that closes it too ("value." rather than "value").
  function toSource(page, start, length) {
    let end = page.offsets[start + length - 1] + 1;
    while (end < page.source.length && /[^\s\p{L}\p{N}]/u.test(page.source[end])) end += 1;
    return [page.offsets[start], end];
  }

  // Ranges separated by nothing but spaces and punctuation are one passage ("UTCTime" ":" "VALUE will be").
  function merge(ranges, source) {
    ranges.sort((a, b) => a[0] - b[0]);
    const merged = [];
    for (const range of ranges) {
      const last = merged[merged.length - 1];
      if (last && (range[0] <= last[1] || !WORD_CHARACTER.test(source.slice(last[1], range[0]).replace(/[^\p{L}\p{N}]/gu, "") || " "))) {
        last[1] = Math.max(last[1], range[1]);
      } else {
        merged.push(range.slice());
      }
    }
    return merged;
  }

  // Where `passage` is in `pageText`: a list of [start, end) offsets into pageText, and the share of the passage's
  // letters and digits that they cover (1 when it was found whole; 0 when not at all).
  function find(pageText, passage) {
    const page = normalize(pageText);
    const whole = normalize(passage || "").letters;
    if (!whole.length || !page.letters.length) return { ranges: [], coverage: 0 };
    const at = page.letters.indexOf(whole);
    if (at >= 0) return { ranges: [toSource(page, at, whole.length)], coverage: 1 };

    const ranges = [];
    let covered = 0, cursor = 0;
    for (const piece of pieces(passage)) {
      const letters = normalize(piece).letters;
      if (letters.length < MIN_PIECE) continue;
      // In reading order first, then anywhere on the page.
      let found = page.letters.indexOf(letters, cursor);
      if (found < 0) found = page.letters.indexOf(letters);
      if (found >= 0) {
        ranges.push(toSource(page, found, letters.length));
        covered += letters.length;
        cursor = found + letters.length;
        continue;
      }
      // A sentence cut by the page break (the passage runs on to the next page, or began on the previous one).
      const best = [longestFound(page.letters, letters, false), longestFound(page.letters, letters, true)]
        .filter((candidate) => candidate && candidate.length >= MIN_PARTIAL)
        .sort((a, b) => b.length - a.length)[0];
      if (best) {
        ranges.push(toSource(page, best.start, best.length));
        covered += best.length;
        cursor = best.start + best.length;
      }
    }
    return { ranges: merge(ranges, page.source), coverage: Math.min(1, covered / whole.length) };
  }

  window.SiloPassage = { find, normalize };
})();
