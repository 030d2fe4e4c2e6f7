"""Sphinx configuration of the book: the chapters (notebooks/, executed) and the docs (docs/).

The source folder is the repository root (so that the chapters link to ``../docs/*.md`` and the
docs to each other exactly as on the repository page); this folder holds the configuration and
the landing page. ``book/build`` runs it; see its header for the options.

Execution: myst-nb's ``cache`` mode (jupyter-cache): a chapter is re-executed only when its code
cells change, so editing one chapter re-executes that one. The cache lives in the output folder,
one per mode (quick and full outputs never mix): ``book/build`` passes its path.
"""

from __future__ import annotations

import os

project = "minimaskrcnn"
author = "the minimaskrcnn developers"
copyright = "the minimaskrcnn developers, MIT licence"  # noqa: A001  (Sphinx's name)

QUICK = os.environ.get("MINIMASKRCNN_QUICK") == "1"

# sphinx-mathjax-offline copies MathJax into the site: the book reads offline, and nothing is
# fetched from a CDN (the browser test fails on any request that does not load)
extensions = ["myst_nb", "sphinx-mathjax-offline"]
root_doc = "book/index"
include_patterns = ["book/*.md", "notebooks/[0-9][0-9]_*.ipynb", "docs/*.md"]
exclude_patterns = ["**/.ipynb_checkpoints", "**/_build", "**/.venv", "**/venv"]

# MyST: ``$...$`` maths as in the notebooks, heading anchors for links such as
# ``model.md#backward``, and links to files that are not pages (sources, images) kept as links.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Execution (myst-nb): every chapter runs top to bottom from notebooks/ as a learner runs it.
nb_execution_mode = "cache"
nb_execution_cache_path = os.environ.get("MINIMASKRCNN_BOOK_CACHE", "_build/.jupyter_cache")
nb_execution_timeout = 1800
nb_execution_raise_on_error = True  # a chapter whose cell raises fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_in_temp = False  # the chapters read files relative to notebooks/

html_theme = "sphinx_book_theme"
html_title = "minimaskrcnn: Mask R-CNN, by hand" + (" (quick build)" if QUICK else "")
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,  # the sources are not copied (html_copy_source)
    "home_page_in_toc": True,
}
html_context = {"default_mode": "light"}
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_copy_source = False
suppress_warnings = ["mystnb.unknown_mime_type"]
