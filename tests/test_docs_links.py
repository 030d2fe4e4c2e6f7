"""Reader-facing text points at things that exist: no relative link to a missing file, no
absolute path of a build machine.

Scanned: README.md, docs/*.md, the book's pages (book/*.md), the markdown cells of the chapter
notebooks, and the READMEs and weight cards shipped inside the package. A link is a markdown link
``[text](target)`` or an image ``![alt](target)``; web links (``http(s)://``, ``mailto:``) and
anchors within the page (``#...``) are not files and are skipped; a ``#anchor`` after a file is
dropped before the file is looked up. A repository path written as code (```minimaskrcnn/...```,
```docs/...```, ```notebooks/...```, ```tests/...```, ```benchmarks/...```, ```book/...```) must exist
too, relative to the repository's root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(
    r"`((?:minimaskrcnn|docs|notebooks|tests|benchmarks|book)/[\w./-]*\.(?:py|md|ipynb|json|npz|sh|png))"
    r"(?:[:#][^`]*)?`")
ABSOLUTE = re.compile(r"(?<![\w.~:/-])/(?:work|root|home|tmp|Users|mnt|private|var/folders)/[\w.-]+")


def pages() -> list[tuple[Path, str]]:
    """``(file, its reader-facing text)``: markdown files whole, notebooks' markdown cells."""
    out = []
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "book").glob("*.md")),
             *sorted((ROOT / "minimaskrcnn").rglob("*.md"))]
    out += [(f, f.read_text(encoding="utf-8")) for f in files]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        out.append((nb, text))
    return out


PAGES = pages()


def broken_links(path: Path, text: str) -> list[str]:
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto:, an anchor in the same page
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            bad.append(target)
    return bad


@pytest.mark.parametrize("path,text", PAGES, ids=[str(p.relative_to(ROOT)) for p, _ in PAGES])
def test_relative_links_resolve(path, text):
    bad = broken_links(path, text)
    assert not bad, f"{path.relative_to(ROOT)}: links to missing files: {bad}"


@pytest.mark.parametrize("path,text", PAGES, ids=[str(p.relative_to(ROOT)) for p, _ in PAGES])
def test_repository_paths_exist(path, text):
    missing = sorted({f for f in REPO_PATH.findall(text) if not (ROOT / f).exists()})
    assert not missing, f"{path.relative_to(ROOT)}: names files that do not exist: {missing}"


@pytest.mark.parametrize("path,text", PAGES, ids=[str(p.relative_to(ROOT)) for p, _ in PAGES])
def test_no_machine_paths(path, text):
    found = ABSOLUTE.findall(text)
    assert not found, f"{path.relative_to(ROOT)}: absolute paths of a machine: {found}"


def test_the_scanners_see_what_they_should(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    text = ("[ok](there.md) [anchor](there.md#a) [gone](missing.md) ![img](fig.png) "
            "[web](https://example.org/x) [same](#top)")
    assert broken_links(page, text) == ["missing.md", "fig.png"]
    assert REPO_PATH.findall("see `minimaskrcnn/model/rpn.py:42`, `docs/x.md`, `dsb2018/a.json`") \
        == ["minimaskrcnn/model/rpn.py", "docs/x.md"]
    assert ABSOLUTE.findall("ran in /work/golden and /tmp/x; see docs/x.md or https://a.b/work/c") \
        == ["/work/golden", "/tmp/x"]
