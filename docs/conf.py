"""Sphinx configuration for lorem_mta.

``tox -e docs`` (or ``sphinx-build -W -b html docs docs/_build/html``) builds the site
and executes the gallery scripts of ``examples/gallery/`` (sphinx-gallery), so every
figure and printed number comes from the current code.
"""

import os
import sys
from pathlib import Path

import lorem_mta

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
# a fixed, small number of threads keeps the gallery reproducible on small machines
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

project = "lorem_mta"
author = "lorem_mta developers"
copyright = "2026, lorem_mta developers"
release = lorem_mta.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "lorem_hypers",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
html_theme = "furo"
html_title = f"lorem_mta {release}"
html_static_path = ["_static"]
# MathJax comes from a CDN. For offline viewing (or screenshots without network), point
# LOREM_DOCS_MATHJAX to a local MathJax 3 ``es5`` folder (``npm install mathjax@3``):
# its contents are copied into ``_static`` and loaded from there.
if os.environ.get("LOREM_DOCS_MATHJAX"):
    html_static_path.append(os.environ["LOREM_DOCS_MATHJAX"])
    mathjax_path = "tex-mml-chtml.js"
exclude_patterns = ["_build", "_scripts", "_ext", "gallery/*.ipynb", "gallery/*.py"]
nitpicky = False
myst_heading_anchors = 3
suppress_warnings = ["config.cache"]

sphinx_gallery_conf = {
    "examples_dirs": ["../examples/gallery"],
    "gallery_dirs": ["gallery"],
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_signature": False,
}
