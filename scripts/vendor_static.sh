#!/usr/bin/env bash
# Re-vendors the browser libraries the pages load from static/vendor/ (nothing is fetched from a CDN at run time).
# Usage: scripts/vendor_static.sh   (versions below; change one, run this, commit static/vendor/)
set -euo pipefail

PDFJS_VERSION=6.5.438       # PDF.js: renders the cited PDF page with its text layer in the side panel
MARKDOWN_IT_VERSION=15.0.3  # renders answers (Markdown) in the browser, raw HTML disabled
DOMPURIFY_VERSION=3.4.18    # allow-list sanitizer applied to the rendered answer before it enters the page

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
  "pdfjs-dist@$PDFJS_VERSION" "markdown-it@$MARKDOWN_IT_VERSION" "dompurify@$DOMPURIFY_VERSION"
modules="$work/node_modules"

rm -rf "$vendor"
mkdir -p "$vendor/pdfjs" "$vendor/markdown-it" "$vendor/dompurify"

pdfjs="$modules/pdfjs-dist"
cp "$pdfjs/build/pdf.min.mjs" "$pdfjs/build/pdf.worker.min.mjs" "$pdfjs/web/pdf_viewer.mjs" "$pdfjs/web/pdf_viewer.css" \
  "$pdfjs/LICENSE" "$vendor/pdfjs/"
# The viewer's stylesheet refers to these; fonts and character maps let PDFs without embedded fonts (or in CJK)
# render; the image decoders' WebAssembly has plain-JavaScript fallbacks (our CSP allows no wasm compilation).
cp -r "$pdfjs/web/images" "$pdfjs/standard_fonts" "$pdfjs/cmaps" "$pdfjs/iccs" "$vendor/pdfjs/"
mkdir -p "$vendor/pdfjs/wasm"
cp "$pdfjs"/wasm/LICENSE_* "$pdfjs"/wasm/*_nowasm_fallback.js "$pdfjs"/wasm/*.wasm "$vendor/pdfjs/wasm/"
rm -f "$vendor"/pdfjs/wasm/quickjs* "$vendor"/pdfjs/wasm/LICENSE_*QUICKJS  # PDF scripting stays off

cp "$modules/markdown-it/dist/browser/markdown-it.umd.min.js" "$modules/markdown-it/LICENSE" "$vendor/markdown-it/"
cp "$modules/dompurify/dist/purify.min.js" "$modules/dompurify/LICENSE" "$vendor/dompurify/"

cat > "$vendor/VERSIONS" <<VERSIONS
# Written by scripts/vendor_static.sh from the npm registry; do not edit by hand.
pdfjs-dist $PDFJS_VERSION
markdown-it $MARKDOWN_IT_VERSION
dompurify $DOMPURIFY_VERSION
VERSIONS
echo "vendored into $vendor:"
cat "$vendor/VERSIONS"
