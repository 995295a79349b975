"""The operator's documentation stays true: links resolve, the README stays short, and the
tables that mirror the code (settings, report fields, safety tests) name what exists.

No database and no network: the files are read and compared with the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from handler.report import Report
from handler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


README = ROOT / "README.md"


DOCS = sorted((ROOT / "docs").glob("*.md"))


PAGES = [README, *DOCS]


# The README's budget: an operator reads it in one sitting, so it holds the quick start, deploy,
# operate and configuration steps and links docs/ for the rest. 16 KiB leaves room for the
# next setting's table row or a new operating step (the README is about 15 KB today) without
# failing CI over a few bytes; a README that outgrows it should move detail to docs/.
README_MAX_BYTES = 16 * 1024


# Pages written on other branches at the same time; the README links them already. A link to
# one of these is checked once the file exists, and skipped until then. Remove an entry once
# its branch is merged.
PENDING: frozenset[str] = frozenset()


# [text](target) and [text]: target; not images' alt text, which is the same syntax with "!"
# and checked the same way.
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The page without code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _links(page: Path) -> list[str]:
    return _INLINE_LINK.findall(_prose(page.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(
        r"^#{1,6}\s+(.+?)\s*#*$", _FENCE.sub("", page.read_text("utf-8")), re.MULTILINE
    )
    anchors: set[str] = set()
    for heading in headings:
        slug, n = _slug(heading), 1
        unique = slug
        while unique in anchors:  # GitHub numbers repeated headings: slug, slug-1, ...
            unique = f"{slug}-{n}"
            n += 1
        anchors.add(unique)
    return anchors


def _relative_links() -> list[tuple[Path, str]]:
    return [
        (page, link)
        for page in PAGES
        for link in _links(page)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", link)  # http:, https:, mailto:
    ]


def test_readme_is_an_operator_guide_within_its_16_kib_budget() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move details to docs/"


def test_readme_sections_come_in_the_operators_order() -> None:
    headings = re.findall(r"^## (.+)$", _FENCE.sub("", README.read_text("utf-8")), re.MULTILINE)
    assert headings == ["Quick start", "Deploy", "Operate", "Configuration", "Uninstall"]


def test_readme_keeps_the_two_quick_start_commands() -> None:
    text = README.read_text("utf-8")
    assert "```sh\nuv run keys-cleanup --demo\n```" in text
    assert "```sh\nuv run pytest\n```" in text


def test_there_are_links_to_check() -> None:
    # Guards the checker itself: a broken pattern would find nothing and pass every page.
    links = _relative_links()
    assert len(links) > 20
    assert any(link.startswith("docs/") for page, link in links if page == README)


@pytest.mark.parametrize(
    ("page", "link"),
    _relative_links(),
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_every_relative_link_resolves(page: Path, link: str) -> None:
    path_part, _, anchor = link.partition("#")
    target = (page.parent / path_part).resolve() if path_part else page
    shown = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else str(target)
    if not target.exists() and shown in PENDING:
        pytest.skip(f"{shown} is written on another branch")
    assert target.exists(), f"{page.name}: link {link} points at a missing {shown}"
    if anchor and target.suffix == ".md":
        assert anchor in _anchors(target), f"{page.name}: no heading #{anchor} in {shown}"


def test_code_and_template_cite_only_docs_that_exist() -> None:
    cited = set()
    for path in [*ROOT.glob("handler/**/*.py"), ROOT / "template.yaml", ROOT / "Makefile"]:
        cited |= {(path, m) for m in re.findall(r"docs/[\w.-]+\.md", path.read_text("utf-8"))}
    for path, doc in sorted(cited):
        if doc in PENDING and not (ROOT / doc).exists():
            continue
        assert (ROOT / doc).exists(), f"{path.relative_to(ROOT)} cites {doc}, which is missing"


def _table_first_column(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)`", text, re.MULTILINE))


def test_the_configuration_table_lists_every_setting() -> None:
    section = README.read_text("utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = _table_first_column(section)
    aliases = {field.alias for field in Settings.model_fields.values() if field.alias}
    assert aliases - listed == set(), "settings missing from the README's configuration table"
    unknown = {name for name in listed - aliases if not name.startswith("POWERTOOLS_")}
    assert unknown == set(), "the configuration table names settings that do not exist"


def test_the_report_page_describes_every_report_field() -> None:
    text = (ROOT / "docs" / "report.md").read_text("utf-8")
    rows = re.findall(r"^\| (`.+?`) \|", text, re.MULTILINE)
    described = {name for row in rows for name in re.findall(r"`([^`]+)`", row)}
    missing = set(Report.model_fields) - described
    assert missing == set(), "docs/report.md misses report fields"


def test_every_test_named_in_the_safety_table_exists() -> None:
    text = (ROOT / "docs" / "safety.md").read_text("utf-8")
    named: list[tuple[str, str]] = []
    for row in re.findall(r"^\|.*\|.*\|$", text, re.MULTILINE):
        current = None
        for module, name in re.findall(r"`(?:T/((?:\w+/)*test_\w+\.py))?::(\w+)`", row):
            current = module or current
            assert current is not None, f"a test without its module: {name}"
            named.append((current, name))
    assert len(named) > 20
    for module, name in named:
        source = (ROOT / "tests" / module).read_text("utf-8")
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{module}::{name} is gone"
