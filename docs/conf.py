"""Sphinx configuration for lorem_mta."""

import lorem_mta

project = "lorem_mta"
author = "lorem_mta developers"
copyright = "2026, lorem_mta developers"
release = lorem_mta.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = []
html_theme = "furo"
html_title = "lorem_mta"
exclude_patterns = ["_build"]
nitpicky = False
