"""The method page drpo/METHOD.md: every `METHOD.md §x` the code cites resolves to one of its
sections, the page ships with the package, its deviations section (§8) names files that exist, and
its tables of the paper's numbers agree with `drpo.eval.paper`.

Heading format of the page (parsed here, keep it when editing the page):
    ## 6. Title          -> section "6"
    ### 6.2 Title        -> section "6.2"
    #### (a) Title      -> section "2.2a" when under "### 2.2"
Citations: `METHOD.md §2.2a`, `METHOD §2.2(a)`, lists `§2.3, §2.8`, `§6.1/§6.2`, `§2.4 / §7`,
ranges `§6.2–6.6` (every section in between must exist too); bare `§x` in the sources is the
project's shorthand for the same page.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "drpo" / "METHOD.md"
SOURCE = ROOT.parent / "shared" / "METHOD.md"  # the team's reference, outside the repository

# -- parsing ------------------------------------------------------------------------------------

_TOP = re.compile(r"^## (\d+)\. \S")
_SUB = re.compile(r"^### (\d+\.\d+) \S")
_LETTER = re.compile(r"^#### \(([a-z])\) \S")
_SOURCE_LETTER = re.compile(r"^\*\*\(([a-z])\) ")  # the source marks 2.2(a) as a bold paragraph


def page_sections(text: str, letter: re.Pattern = _LETTER) -> list[str]:
    """Section ids in page order: "1", "1.1", ..., "2.2a", ..."""
    out: list[str] = []
    sub = None
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        if m := _TOP.match(line):
            out.append(m[1])
            sub = None
        elif m := _SUB.match(line):
            out.append(m[1])
            sub = m[1]
        elif (m := letter.match(line)) and sub is not None:
            out.append(sub + m[1])
    return out


_REF = r"\d+(?:\.\d+)?(?:\([a-z]\)|[a-z](?![a-z]))?"
REF = re.compile(rf"§\s*(?P<a>{_REF})(?:\s*[–-]\s*(?P<b>{_REF}))?")
# "METHOD.md §" or "METHOD §" followed by a list of refs separated by , / and (across line breaks)
CITATION = re.compile(
    rf"METHOD(?:\.md)?\s+(?P<refs>§\s*{_REF}(?:\s*[–-]\s*{_REF})?(?:\s*(?:,|/|and)?\s*(?:#\s*)?§\s*{_REF}(?:\s*[–-]\s*{_REF})?)*)"
)


def _norm(ref: str) -> str:
    return ref.replace("(", "").replace(")", "")


def expand(a: str, b: str | None) -> list[str]:
    """One ref, or every section of a range "6.2–6.6" / "1.2–1.4" (same major number)."""
    a = _norm(a)
    if not b:
        return [a]
    b = _norm(b)
    ma, mb = re.fullmatch(r"(\d+)\.(\d+)", a), re.fullmatch(r"(\d+)\.(\d+)", b)
    if not (ma and mb and ma[1] == mb[1] and int(ma[2]) <= int(mb[2])):
        raise ValueError(f"cannot expand the range §{a}–{b}")
    return [f"{ma[1]}.{i}" for i in range(int(ma[2]), int(mb[2]) + 1)]


def refs_in(text: str) -> list[str]:
    return [s for m in REF.finditer(text) for s in expand(m["a"], m["b"])]


def source_files() -> list[Path]:
    files = sorted((ROOT / "drpo").rglob("*.py"))
    files += sorted(p for p in (ROOT / "workflow").rglob("*") if p.is_file() and p.suffix in {"", ".smk", ".py", ".yaml", ".yml", ".md", ".rst", ".txt"})
    files += [ROOT / "Snakefile", ROOT / "README.md"]
    files += sorted((ROOT / "config").rglob("*.yaml"))
    files += sorted((ROOT / "tests").glob("*.py"))
    return [f for f in files if f.is_file()]


def citations() -> list[tuple[str, int, str]]:
    """(file, line, section) of every explicit `METHOD(.md) §x` citation."""
    out = []
    for f in source_files():
        if f.name == Path(__file__).name:
            continue  # this file's docstring and parser tests show the syntax
        text = f.read_text(errors="replace")
        for m in CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out += [(str(f.relative_to(ROOT)), line, s) for s in refs_in(m["refs"])]
    return out


def bare_refs() -> list[tuple[str, int, str]]:
    """(file, line, section) of every `§x` in the sources (the page itself excluded)."""
    out = []
    for f in source_files():
        if f.name == Path(__file__).name:
            continue  # this file's docstring shows the syntax
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            out += [(str(f.relative_to(ROOT)), i, s) for s in refs_in(line)]
    return out


def section_text(text: str, heading: str) -> str:
    """The body of the first heading line starting with `heading`, up to the next heading of the
    same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    body = []
    for line in lines[start + 1 :]:
        hashes = len(line) - len(line.lstrip("#"))
        if 0 < hashes <= level and line[hashes : hashes + 1] == " ":
            break
        body.append(line)
    return "\n".join(body)


@pytest.fixture(scope="module")
def page() -> str:
    assert PAGE.is_file(), f"{PAGE} is missing"
    return PAGE.read_text()


@pytest.fixture(scope="module")
def sections(page) -> list[str]:
    return page_sections(page)


# -- the parser itself ----------------------------------------------------------------------------


def test_citation_parser_reads_every_form():
    text = "x (METHOD.md §1.2–1.4) y METHOD §2.2(a) z METHOD.md §2.3, §2.8, §4, §7 w METHOD §2.2b,\n§2.4 and §6.1/§6.2 / §5"
    got = [s for m in CITATION.finditer(text) for s in refs_in(m["refs"])]
    assert got == ["1.2", "1.3", "1.4", "2.2a", "2.3", "2.8", "4", "7", "2.2b", "2.4", "6.1", "6.2", "5"]
    assert refs_in("§6.2–6.6): and (§2.5)") == ["6.2", "6.3", "6.4", "6.5", "6.6", "2.5"]
    assert refs_in("§1.3 for ONE set; §2.2a.") == ["1.3", "2.2a"]


def test_page_parser_reads_the_heading_format():
    text = "## 2. T\n### 2.2 F\n#### (a) L\n```\n## 9. not a heading\n```\n#### (b) V\n### 2.3 R\n## 3. Rewards\n"
    assert page_sections(text) == ["2", "2.2", "2.2a", "2.2b", "2.3", "3"]


# -- (1) every citation resolves -------------------------------------------------------------------


def test_page_sections_are_unique_and_nested(sections):
    assert len(sections) == len(set(sections)), f"duplicate sections: {sorted(s for s in sections if sections.count(s) > 1)}"
    tops = [s for s in sections if "." not in s]
    assert tops == [str(i) for i in range(1, 9)], tops
    for s in sections:
        parent = s.split(".")[0]
        assert parent in sections and sections.index(parent) <= sections.index(s), f"§{s} is not inside § {parent}"


def test_every_method_citation_resolves_to_a_section(sections):
    found = citations()
    assert len(found) >= 40, f"only {len(found)} citations found: is the regex still right?"
    missing = [f"{f}:{line}: §{s}" for f, line, s in found if s not in sections]
    assert not missing, "citations of sections drpo/METHOD.md lacks:\n" + "\n".join(missing)


def test_every_bare_section_reference_resolves(sections):
    found = bare_refs()
    missing = [f"{f}:{line}: §{s}" for f, line, s in found if s not in sections]
    assert not missing, "§ references to sections drpo/METHOD.md lacks:\n" + "\n".join(missing)


def test_the_page_keeps_the_reference_numbering(sections):
    """Every section of the team's reference exists in the page (where the reference is present)."""
    if not SOURCE.is_file():
        pytest.skip(f"{SOURCE} is not available here")
    theirs = page_sections(SOURCE.read_text(), letter=_SOURCE_LETTER)
    assert theirs, "no sections parsed from the reference"
    assert [s for s in theirs if s not in sections] == []
    assert [s for s in sections if s in theirs] == theirs, "the shared sections are in another order"


def test_sections_referenced_inside_the_page_exist(page, sections):
    missing = sorted({s for s in refs_in(page) if s not in sections})
    assert not missing, f"the page refers to §{missing}, which it does not have"


# -- (2) the page ships with the package ------------------------------------------------------------


def test_the_page_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {}).get("drpo", [])

    def matches(pattern: str) -> bool:
        return fnmatch.fnmatch("METHOD.md", pattern) or (pattern.startswith("**/") and fnmatch.fnmatch("METHOD.md", pattern[3:]))

    assert any(matches(p) for p in patterns), (
        f"drpo/METHOD.md is not package data: [tool.setuptools.package-data] drpo = {patterns}; "
        'add "METHOD.md" (or "*.md") to that list in pyproject.toml'
    )


# -- (3) the deviations section -----------------------------------------------------------------------

_PATH = re.compile(r"`((?:drpo|config|workflow|tests|envs)/[\w./-]*|Snakefile|pyproject\.toml)`")


def test_the_deviations_section_exists(page, sections):
    assert "## 8. Where drpo differs from the authors, and why" in page
    subs = [s for s in sections if s.startswith("8.")]
    assert len(subs) >= 10, subs


def test_each_deviation_says_what_why_and_where(page, sections):
    for s in (s for s in sections if s.startswith("8.")):
        body = section_text(page, f"### {s} ")
        for label in ("**Authors.**", "**drpo.**", "**Why.**", "**Where.**"):
            assert label in body, f"§{s} lacks {label}"
        where = body.split("**Where.**", 1)[1]
        assert _PATH.search(where), f"§{s}: **Where.** names no file"


def test_every_file_the_deviations_cite_exists(page):
    body = section_text(page, "## 8. ")
    paths = sorted({m[1] for m in _PATH.finditer(body)})
    assert len(paths) >= 15, paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"§8 cites files that do not exist: {missing}"


@pytest.mark.parametrize(
    "section, files",
    [
        ("8.1", ["drpo/drift.py", "drpo/train/drpo_method.py"]),
        ("8.2", ["drpo/models/generators.py"]),
        ("8.3", ["drpo/train/trainer.py"]),
        ("8.7", ["drpo/models/features.py", "config/paper/sdxl-turbo.yaml"]),
        ("8.10", ["drpo/models/features.py", "config/paper/sd-turbo.yaml"]),
        ("8.11", ["drpo/train/drpo_method.py"]),
        ("8.13", ["drpo/data/pickapic.py"]),
        ("8.18", ["drpo/world/"]),
    ],
)
def test_known_deviations_name_their_files(page, section, files):
    where = section_text(page, f"### {section} ").split("**Where.**", 1)[1]
    for f in files:
        assert f"`{f}`" in where, f"§{section} should name {f}"


def test_every_file_the_page_cites_exists(page):
    missing = sorted({m[1] for m in _PATH.finditer(page) if not (ROOT / m[1]).exists()})
    assert not missing, f"the page cites files that do not exist: {missing}"


# -- the paper's numbers on the page agree with drpo.eval.paper ------------------------------------


def _table(body: str) -> dict[str, list[str]]:
    rows = {}
    for line in body.splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _num(cell: str) -> float:
    return float(cell.replace("−", "-").replace("≈", ""))


@pytest.mark.parametrize("section, table", [("6.1", "sdxl_turbo_main"), ("6.2", "sd_turbo_main")])
def test_main_tables_match_the_paper_data(page, section, table):
    from drpo.eval.paper import PAPER, ROWS

    rows = _table(section_text(page, f"### {section} "))
    cols = [(t, m) for t in ("pickapic_v2", "parti") for m in ("pickscore", "aesthetic", "imagereward")]
    for row in ROWS[table]:
        cells = rows[row.label]
        assert int(cells[0]) == row.steps and cells[1] == row.reward_grad, row.label
        assert [_num(c) for c in cells[2:]] == [PAPER[table][(row.key, t, m)] for t, m in cols], row.label


def test_small_tables_match_the_paper_data(page):
    from drpo.eval.paper import PAPER

    tasks = {"Single object": "single_object", "Two objects": "two_object", "Counting": "counting", "Colors": "colors",
             "Position": "position", "Color attribution": "color_attr"}
    rows = _table(section_text(page, "### 6.4 "))
    for label, tag in tasks.items():
        assert [_num(c) for c in rows[label]] == [PAPER["geneval"][(k, "geneval", f"geneval:{tag}")] for k in ("base", "drpo")]
    ref = {"No reference": "no_reference", "Perceptual loss": "perceptual", "Ref. drift loss": "ref_drift"}
    rows = _table(section_text(page, "### 6.5 "))
    for label, key in ref.items():
        assert [_num(c) for c in rows[label]] == [PAPER["reference_objective"][(key, "pickapic_v2", m)] for m in ("pickscore", "clip", "aesthetic", "hpsv2")]
    pref = {"SDXL-Turbo": "base", "DPO": "dpo", "GRPO": "grpo", "DRaFT": "draft", "VGGFlow": "vggflow"}
    rows = _table(section_text(page, "### 6.7 "))
    for label, key in pref.items():
        assert [_num(c) for c in rows[label]] == [PAPER["qwen3vl_preference"][(key, t, "preference")] for t in ("pickapic_v2", "parti")]
    rows = _table(section_text(page, "### 6.3 "))
    assert [_num(c) for c in rows["Update time (s)"]] == [PAPER["hpsv3_efficiency"][(k, "", "update_s")] for k in ("draft", "drpo")]
    assert [_num(c) for c in rows["Backward (s)"]] == [PAPER["hpsv3_efficiency"][(k, "", "backward_s")] for k in ("draft", "drpo")]
