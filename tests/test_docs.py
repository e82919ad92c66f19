"""The docs stay true: README.md is a short front door, every relative link and #anchor in it and in
docs/ resolves, and every generated results table equals what its results file gives
(`python -m benchmarks.tables`)."""
import pathlib
import re

import pytest

from benchmarks import tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def prose(text):
    """The page without its fenced code blocks (a link or heading in code is not one)."""
    return re.sub(r"(?ms)^```.*?^```", "", text)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    seen, result = {}, set()
    for line in prose(page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.*)", line)
        if match:
            base = slug(match[1])
            count = seen.get(base, 0)
            result.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return result


def test_slug_is_githubs():
    assert slug("Works wherever torch.nn works") == "works-wherever-torchnn-works"
    assert slug("Training: watch the cells learn") == "training-watch-the-cells-learn"
    assert slug("What a run leaves in `--out`") == "what-a-run-leaves-in---out"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path_text, _, anchor = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        if not path.exists():
            broken.append(f"{target}: no {path.relative_to(ROOT) if ROOT in path.parents else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_bytes()) <= 15_000
    text = (ROOT / "README.md").read_text()
    assert "make test" in text and "make train" in text  # the two set-up commands


@pytest.mark.parametrize("page", tables.documents(), ids=[str(p.relative_to(ROOT)) for p in tables.documents()])
def test_generated_tables_match_their_results_files(page):
    text = page.read_text()
    assert tables.render(text, tables.root_of(page)) == text, (
        f"{page.relative_to(ROOT)}: a generated table differs from its results file; run "
        f"`python -m benchmarks.tables`")


def test_every_generated_table_names_its_source():
    for name, make in tables.TABLES.items():
        text = make()
        if name.startswith("speed"):
            assert "python -m benchmarks" in text and "logical CPUs" in text and "AVX" in text, name
        elif name == "training":
            assert "train_defaults.md" in text and "EPYC" in text


def test_a_stale_table_is_caught(tmp_path):
    page = (ROOT / "README.md").read_text()
    stale = page.replace("| MNIST rows (64, 28, 28, 128) | 0.", "| MNIST rows (64, 28, 28, 128) | 9.", 1)
    assert stale != page and tables.render(stale, "") != stale
