"""The front page and docs/ hold together: every relative link and anchor resolves, and every command shown in
a bash block names a file or console script that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from tests.helpers import REPO

PAGES = [REPO / "README.md", REPO / "results" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _outside_code(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_anchor_resolves(page):
    bad = []
    for target in LINK.findall(_outside_code(page.read_text())):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{page.relative_to(REPO)}:\n" + "\n".join(bad)


def _bash_lines(page: Path) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.split(" #")[0].strip() for line in joined.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_names_a_file_or_console_script_that_exists(page):
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    bad = []
    for line in _bash_lines(page):
        words = line.split()
        for i, word in enumerate(words):  # what python / bash / torchrun run
            if words[i - 1:i] in (["python"], ["bash"]) or (i and words[i - 1].startswith("--nproc")):
                if re.search(r"\.(py|sh)$", word) and not (REPO / word).is_file():
                    bad.append(f"{line}: {word} does not exist")
        for word in words:
            if re.fullmatch(r"(tools|benchmarks|detection|pretrain)/[\w/.-]+\.(py|sh)", word) and \
                    not (REPO / word).is_file():
                bad.append(f"{line}: {word} does not exist")
        if words[0].startswith("rimifm-") and words[0] not in scripts:
            bad.append(f"{line}: no console script {words[0]}")
    assert not bad, f"{page.relative_to(REPO)}:\n" + "\n".join(bad)


FIGURE = re.compile(r"\d[\d,.]*\s?(?:images/s|views/s|s/iter|min\b|minutes?\b|hours?\b|h\b|s\b)|\d ± \d|p = 0\.\d")
MEASURED_COLUMNS = re.compile(r"images/s|views/s|top-1|\bAP|kNN|linear|overhead|time", re.I)
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
#: where: one of the machines of docs/benchmarks.md, or a GPU
MACHINE = re.compile(r"\bmachines?\b|\bGPU\b")


def _blocks(text: str) -> list[str]:
    """The paragraphs, lists and tables of a page, code blocks left out."""
    return [b.strip() for b in re.split(r"\n\s*\n", _outside_code(text)) if b.strip()]


def _states_a_measurement(block: str) -> bool:
    """A duration, a throughput or a figure with its uncertainty or p-value; or a table whose columns are
    measured quantities (throughput, top-1, AP, time) and whose cells hold decimals."""
    if FIGURE.search(block):
        return True
    if block.startswith("|"):
        header, *body = block.splitlines()
        return bool(MEASURED_COLUMNS.search(header)) and any(re.search(r"\d\.\d", row) for row in body)
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_measured_figure_says_when_it_was_measured(page):
    """Figures carry where and when they were measured: a paragraph or table that states one names the date,
    itself or in one of the two blocks before it (a table's caption; the caption of the table a paragraph reads)."""
    blocks = _blocks(page.read_text())
    bad = []
    for i, block in enumerate(blocks):
        if _states_a_measurement(block):
            context = "\n".join(blocks[max(0, i - 2):i + 1])
            bad += [f"{what}: {block.splitlines()[0][:100]}" for what, pattern in (("no date", DATE),
                                                                                    ("no machine", MACHINE))
                    if not pattern.search(context)]
    assert not bad, f"{page.relative_to(REPO)}: figures that do not say when (YYYY-MM-DD) or where:\n" + "\n".join(bad)
