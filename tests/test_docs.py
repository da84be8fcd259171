"""The docs stay true: a short README, links that resolve inside the repository, commands and flags that exist,
and a config reference whose defaults are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from transferlab.commands import deploy, lab, run
from transferlab.config import build_config
from transferlab.tasks import TASKS  # noqa: F401  (registers every task's config section)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 12_000
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a YAML block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose_lines(page.read_text(encoding="utf-8"))
            if re.match(r"^#{1,6} ", line)}


def _links(page: Path) -> list[str]:
    return [m.group(1) for line in _prose_lines(page.read_text(encoding="utf-8")) for m in _LINK.finditer(line)]


def _section(page: Path, heading: str) -> str:
    """The text of a `## heading` section, up to the next `## ` heading."""
    text = page.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _cli() -> typer.Typer:
    """The CLI with every command registered, as `transferlab` builds it."""
    app = typer.Typer()
    for module in (run, lab, deploy):
        module.register(app)
    return app


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= README_MAX_BYTES
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(page: Path):
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # a web address (https:, mailto:) is not a file of the repository
            continue
        path_part, _, anchor = target.partition("#")
        assert not path_part.startswith("/"), f"{page.name}: absolute path in link '{target}'"
        resolved = (page.parent / path_part).resolve() if path_part else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: link '{target}' points outside the repository"
        rel = resolved.relative_to(ROOT).as_posix()
        assert resolved.exists(), f"{page.name}: link '{target}' points to a missing file"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: link '{target}': no such heading in {rel}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_outside_the_repository(page: Path):
    text = page.read_text(encoding="utf-8")
    assert "../" not in text
    assert not re.search(r"(?<![\w.])/(work|home|tmp|root)/", text), f"{page.name} names a local absolute path"


def test_readme_commands_exist():
    named = set(re.findall(r"`transferlab ([a-z-]+)", _section(README, "Commands")))
    commands = set(typer.main.get_command(_cli()).commands)
    assert len(named) >= 10
    assert named <= commands, f"README names commands the CLI lacks: {sorted(named - commands)}"


@pytest.mark.parametrize("page", [README, ROOT / "docs" / "training.md"], ids=["README.md", "docs/training.md"])
def test_every_train_flag_is_documented(page: Path):
    train = typer.main.get_command(_cli()).commands["train"]
    flags = {opt for param in train.params for opt in param.opts if opt.startswith("--")}
    text = page.read_text(encoding="utf-8")
    missing = sorted(flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text))
    assert len(flags) > 20
    assert not missing, f"{page.name} does not mention these `transferlab train` flags: {missing}"


def test_config_reference_shows_the_real_defaults():
    reference = _section(ROOT / "docs" / "training.md", "Config reference")
    documented: dict = {}
    for block in re.findall(r"```yaml\n(.*?)```", reference, flags=re.DOTALL):
        documented.update(yaml.safe_load(block))
    actual = build_config({}).model_dump(mode="json")  # with every task's registered section
    for section, value in actual.items():
        assert section in documented, f"docs/training.md: config section '{section}' is not documented"
        assert documented[section] == value, f"docs/training.md: defaults of '{section}' differ from config.py"
    assert documented.keys() == actual.keys(), "docs/training.md documents config sections that do not exist"
