r"""Render pages of the built documentation to PNG without a browser.

The HTML pages are printed to PDF with WeasyPrint (pango/cairo, no JavaScript) and the
PDF pages rasterised with pypdfium2. Math, which the site typesets with MathJax in the
browser, is typeset beforehand with MathJax in Node.js (``npm install mathjax@3``), so
that broken TeX shows up as MathJax's red error text; without Node.js or MathJax the raw
TeX stays in the page. A page can be rendered from the PDF page that holds an anchor (a
section's id) on, to look at one section of a long page.

``docs/_scripts/screenshots.sh`` does the same with headless Chromium where it is
installed. Needs the docs extra plus ``pip install weasyprint pypdfium2`` (not project
dependencies); MathJax for Node.js goes to ``--mathjax`` (default
``/tmp/lorem-mathjax``, as for ``screenshots.sh``) with
``npm install --prefix /tmp/lorem-mathjax mathjax@3``. Usage::

    python docs/_scripts/screenshots.py --build            # build, then the default pages
    python docs/_scripts/screenshots.py --site SITE --out DIR \
        training#recommended-recipes:3 uncertainty engines

Every ``PAGE[#ANCHOR][:N]`` argument renders ``N`` PDF pages (``--pages`` by default)
of ``PAGE.html``, from the PDF page that holds the element with id ``ANCHOR`` (a
section's id: its title in lower case, words joined by ``-``; the top of the page when
it is left out); the files are ``OUT/PAGE[-ANCHOR]-K.png``.
``--build`` runs ``sphinx-build -W --keep-going`` without executing the gallery
(``-D plot_gallery=0``) into ``--site`` and prints the warnings it reports.

The screenshots in ``docs/_static/screenshots/`` named after a section were made with::

    python docs/_scripts/screenshots.py --build --out docs/_static/screenshots \
        uncertainty#calibration-on-the-cumulene-rotor:2 training#recommended-recipes:2 \
        training#runs-at-the-baseline:1 engines#variable-cell-runs-npt-cell-relaxation:1
"""

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
#: the pages rendered when none are given
DEFAULT_PAGES = [
    "uncertainty:4",
    "training#recommended-recipes:3",
    "training#time-budget:1",
    "training#accuracy-against-lorem-jax:2",
    "engines#variable-cell-runs-npt-cell-relaxation:2",
    "getting-started:3",
    "reliability:3",
    "architecture#a-smooth-size-consistent-energy-surface:3",
    "engines-lammps:3",
    "hyperparameters:3",
]
#: printed pages: no navigation sidebars, the content at the full width
PRINT_CSS = """
@page { size: 1000px 1300px; margin: 24px; }
.sidebar-drawer, .toc-drawer, .mobile-header, .back-to-top, .theme-toggle-container,
.related-pages, .bottom-of-page, .skip-to-content { display: none !important; }
html, body, .page, .main, .content, article { display: block !important;
    width: auto !important; max-width: none !important; height: auto !important;
    min-height: 0 !important; overflow: visible !important; margin: 0 !important; }
svg.mathjax { display: inline; }
"""
BREAK_CSS = '[id="{}"] {{ break-before: page; }}'
MATH = re.compile(r'(<(span|div) class="math notranslate nohighlight">)(.*?)(</\2>)', re.DOTALL)
NODE_SCRIPT = r"""
const formulas = JSON.parse(require('fs').readFileSync(0, 'utf8'));
require('mathjax').init({loader: {load: ['input/tex', 'output/svg']}}).then((MathJax) => {
  const adaptor = MathJax.startup.adaptor;
  const out = formulas.map(([tex, display]) => {
    const node = MathJax.tex2svg(tex, {display});
    return adaptor.innerHTML(node);
  });
  process.stdout.write(JSON.stringify(out));
}).catch((err) => { console.error(err.message); process.exit(1); });
"""


def build(site: Path) -> list[str]:
    """Build the docs into ``site`` (gallery not executed); return the warning lines."""
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"]
    command += ["-D", "plot_gallery=0", str(DOCS), str(site)]
    result = subprocess.run(command, capture_output=True, text=True)
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    warnings += [line for line in result.stderr.splitlines() if "ERROR" in line]
    if result.returncode != 0 and not warnings:
        raise RuntimeError(f"sphinx-build failed:\n{result.stderr[-3000:]}")
    return warnings


def typeset(formulas: list[tuple[str, bool]], mathjax: Path | None) -> list[str] | None:
    """SVG markup of every ``(tex, display)`` formula, or ``None`` without MathJax."""
    node = shutil.which("node")
    if node is None or mathjax is None or not (mathjax / "node_modules" / "mathjax").exists():
        return None
    result = subprocess.run(
        [node, "-e", NODE_SCRIPT],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        cwd=mathjax,
        env={"NODE_PATH": str(mathjax / "node_modules")},
    )
    if result.returncode != 0:
        raise RuntimeError(f"MathJax failed: {result.stderr}")
    return json.loads(result.stdout)


def strip_delimiters(tex: str) -> tuple[str, bool]:
    r"""TeX without the ``\(...\)`` or ``\[...\]`` of Sphinx; whether it is display math."""
    tex = html.unescape(tex).strip()
    if tex.startswith("\\[") and tex.endswith("\\]"):
        return tex[2:-2], True
    if tex.startswith("\\(") and tex.endswith("\\)"):
        return tex[2:-2], False
    return tex, True


def with_math(page: str, mathjax: Path | None) -> tuple[str, list[str]]:
    """The page with its math typeset as inline SVG; the formulas MathJax rejected."""
    matches = list(MATH.finditer(page))
    formulas = [strip_delimiters(match.group(3)) for match in matches]
    svgs = typeset(formulas, mathjax) if formulas else []
    if svgs is None:
        return page, []
    errors = [tex for (tex, _), svg in zip(formulas, svgs, strict=True) if "merror" in svg]
    pieces, last = [], 0
    for match, svg, (_, display) in zip(matches, svgs, formulas, strict=True):
        svg = svg.replace("<svg ", '<svg class="mathjax" ', 1)
        if display:
            svg = f'<div style="text-align: center; margin: 0.8em 0">{svg}</div>'
        pieces += [page[last : match.start()], match.group(1), svg, match.group(4)]
        last = match.end()
    return "".join(pieces) + page[last:], errors


def parse(spec: str, pages: int) -> tuple[str, str, int]:
    """``PAGE[#ANCHOR][:N]`` -> (page, anchor, number of PDF pages)."""
    spec, _, count = spec.partition(":")
    name, _, anchor = spec.partition("#")
    return name, anchor, int(count) if count else pages


def render(site: Path, spec: str, out: Path, dpi: float, pages: int, mathjax) -> list[Path]:
    """Render one ``PAGE[#ANCHOR][:N]``; return the PNG files written."""
    import pypdfium2
    import weasyprint
    from PIL import Image

    name, anchor, count = parse(spec, pages)
    source = site / f"{name}.html"
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such page in the built site")
    page, errors = with_math(source.read_text(), mathjax)
    for tex in errors:
        print(f"{name}: MathJax error in {tex!r}")
    document = weasyprint.HTML(string=page, base_url=str(source)).render(
        # the section of the anchor starts a new PDF page, so that its screenshot starts
        # with its title
        stylesheets=[weasyprint.CSS(string=PRINT_CSS + BREAK_CSS.format(anchor) * bool(anchor))]
    )
    start = 0
    if anchor:
        found = [i for i, rendered in enumerate(document.pages) if anchor in rendered.anchors]
        if not found:
            raise ValueError(f"{source}: no element with id {anchor!r}")
        start = found[0]
    stem = f"{name}-{anchor}" if anchor else name
    written = []
    with tempfile.TemporaryDirectory() as folder:
        pdf_path = Path(folder) / "page.pdf"
        document.write_pdf(pdf_path)
        pdf = pypdfium2.PdfDocument(str(pdf_path))
        for k in range(start, min(start + count, len(pdf))):
            image = pdf[k].render(scale=dpi / 72).to_pil()
            path = out / f"{stem}-{k - start + 1}.png"
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
                path, optimize=True
            )
            written.append(path)
        pdf.close()
    return written


def main() -> None:
    """Build (optionally) and render the pages given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT_PAGES, help="PAGE[#ANCHOR][:N]")
    parser.add_argument("--site", type=Path, default=Path("/tmp/lorem-docs-screenshots"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/lorem-docs-screenshots/png"))
    parser.add_argument("--build", action="store_true", help="run sphinx-build first")
    parser.add_argument("--dpi", type=float, default=110.0)
    parser.add_argument("--pages", type=int, default=2, help="PDF pages per spec")
    parser.add_argument(
        "--mathjax",
        type=Path,
        default=Path("/tmp/lorem-mathjax"),
        help="folder holding node_modules/mathjax (npm install mathjax@3)",
    )
    arguments = parser.parse_args()
    if arguments.build:
        warnings = build(arguments.site)
        print(f"sphinx-build: {len(warnings)} warnings")
        for line in warnings:
            print("  " + line)
    arguments.out.mkdir(parents=True, exist_ok=True)
    if not (arguments.mathjax / "node_modules" / "mathjax").exists():
        print(f"no MathJax in {arguments.mathjax}: math stays as TeX source")
    for spec in arguments.specs:
        for path in render(
            arguments.site,
            spec,
            arguments.out,
            arguments.dpi,
            arguments.pages,
            arguments.mathjax,
        ):
            print(path)


if __name__ == "__main__":
    main()
