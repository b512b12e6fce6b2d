#!/usr/bin/env bash
# Render screenshots of the built documentation with headless Chromium
# (docs/_static/screenshots/*.png). Builds the site into /tmp/lorem-docs-offline with a
# local MathJax so that the math renders without network access.
#
# Needs: chromium (Debian: apt-get install chromium), npm (for MathJax 3), the docs extra.
# Usage: bash docs/_scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
MATHJAX=${MATHJAX:-/tmp/lorem-mathjax}
if [ ! -f "$MATHJAX/node_modules/mathjax/es5/tex-mml-chtml.js" ]; then
    mkdir -p "$MATHJAX"
    (cd "$MATHJAX" && npm install --silent mathjax@3)
fi
SITE=/tmp/lorem-docs-offline
LOREM_DOCS_MATHJAX="$MATHJAX/node_modules/mathjax/es5" \
    python -m sphinx -W -b html docs "$SITE"
OUT=docs/_static/screenshots
mkdir -p "$OUT"
shot() {  # shot NAME PAGE HEIGHT
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --allow-file-access-from-files --virtual-time-budget=20000 \
        --window-size="1280,$3" --screenshot="$1" "file://$SITE/$2"
}
shot "$OUT/index.png" index.html 1600
shot "$OUT/architecture.png" architecture.html 1600
shot "$OUT/gallery-index.png" gallery/index.html 1600
shot "$OUT/gallery-scaling.png" gallery/plot_04_scaling.html 1600
# the figures of the long-range example are further down the page: render a tall page
# and keep the 1600 pixels around them
shot /tmp/lorem-long-range.png gallery/plot_03_long_range.html 7000
python - <<'PY'
from PIL import Image

Image.open("/tmp/lorem-long-range.png").crop((0, 1960, 1280, 3560)).save(
    "docs/_static/screenshots/gallery-long-range.png"
)
PY
echo "screenshots in $OUT"
