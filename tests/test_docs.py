"""README.md and docs/*.md: their `replearn ...` commands name real subcommands and options, their links
resolve, every docs page is linked from the README, and the README stays a page read in ten minutes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from replearn.cli import app

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_BYTES = 12 * 1024

FENCED = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`([^`]+)`")
# `replearn` as a command word, not `replearn.training`, `src/replearn`, `registry.example.com/replearn:training`.
COMMAND_WORD = re.compile(r"(?<![\w./:@-])replearn(?![\w./:@-])")
# What may stand before a command on its line: nothing, a shell separator, `VAR=value` assignments. So the
# `replearn` of "the model 'replearn'" or "another replearn pipeline run holds ..." is not a command.
COMMAND_START = re.compile(r"(?:.*(?:&&|\|\||[;|&(]|\bdo|\bthen))?\s*(?:\w+=\S*\s+)*")
SHELL_BREAKS = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>&1"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def command_lines(code: str) -> list[str]:
    """The lines of a fenced block with continuations joined and shell comments dropped."""
    joined = re.sub(r"\\\n", " ", code)
    return [re.sub(r"(^|\s)#.*", "", line) for line in joined.splitlines()]


def usages(page: Path) -> list[str]:
    """Every `replearn ...` of a page, to the end of its line: in fenced code blocks, and in inline code
    (which may wrap a line)."""
    text = page.read_text(encoding="utf-8")
    pieces = [line for block in FENCED.findall(text) for line in command_lines(block)]
    prose = FENCED.sub("", text)
    pieces += [span.replace("\n", " ") for span in INLINE.findall(prose) if "\n\n" not in span]
    return [command for piece in pieces for command in commands_in(piece)]


def commands_in(text: str) -> list[str]:
    """Each `replearn` command of one line or inline code span, from `replearn` to the end."""
    starts = [match.start() for match in COMMAND_WORD.finditer(text) if COMMAND_START.fullmatch(text[: match.start()])]
    return [text[start:] for start in starts]


def words_of(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a prose fragment
        return text.split()


# typer builds click objects (recent typer from a copy of click it ships), so they are read by their attributes.
def option_names(command: Any, help_names: list[str]) -> dict[str, Any]:
    """Every spelling of every option of `command` (`--fp16` and `--no-fp16` alike), and the help option's."""
    names: dict[str, Any] = dict.fromkeys(help_names)
    for param in command.params:
        if param.param_type_name == "option":
            for opt in [*param.opts, *param.secondary_opts]:
                names[opt] = param
    return names


def takes_value(param: Any) -> bool:
    return param is not None and not param.is_flag and not param.count


def problems(text: str) -> list[str]:
    """What is wrong with one `replearn ...` command line: an unknown subcommand, or an option its command lacks.

    Options are checked against the command they follow, as click parses them: the global options
    (`--config`, `--set`, `--verbose`, ...) belong before the subcommand.
    """
    root = typer.main.get_command(app)
    help_names = root.context_settings.get("help_option_names", ["--help"])  # subcommands inherit them
    command: Any = root
    path = ["replearn"]
    words = words_of(text)[1:]
    found: list[str] = []
    i = 0
    while i < len(words):
        word = words[i].strip("[]")
        i += 1
        if word in SHELL_BREAKS:
            break
        if word in {"", "...", "…"}:
            continue
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-[\d.]+", word):
            names = option_names(command, help_names)
            spellings = word.split("/") if all(part.startswith("-") for part in word.split("/")) else [word]
            for spelling in spellings:
                option = spelling.split("=", 1)[0]
                if option not in names:
                    found.append(f"`{' '.join(path)}` has no option {option} (it has {', '.join(sorted(names))})")
                elif len(spellings) == 1 and "=" not in spelling and takes_value(names[option]):
                    i += 1  # the option's value
            continue
        if hasattr(command, "commands"):  # a group: the word names its subcommand
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
                break  # a placeholder such as COMMAND: nothing more to check
            sub = command.commands.get(word)
            if sub is None:
                known = ", ".join(sorted(command.commands))
                found.append(f"`{' '.join(path)}` has no subcommand {word!r} (it has {known})")
                break
            command, path = sub, [*path, word]
    return found


def test_the_checker_finds_wrong_commands_and_accepts_right_ones() -> None:
    assert problems("replearn --set train.iterations=5 train in out --iterations 3 --resume") == []
    assert problems("replearn export a.pt m.onnx --quantize/--fp16") == []
    assert problems("replearn [--config FILE] [--set section.key=value ...] [--verbose] COMMAND ...") == []
    assert problems("replearn --config 'my params.yaml' data chars out --per-class 2 --fonts=a.ttf") == []
    assert problems("replearn data chars --help") == []
    assert problems("replearn validate | preprocess | train") == []
    assert commands_in("the model 'replearn' yet; another replearn pipeline run; cd repo && replearn cluster") == [
        "replearn cluster"
    ]
    assert "no subcommand 'frobnicate'" in problems("replearn frobnicate")[0]
    assert "no option --iteratons" in problems("replearn train in out --iteratons 3")[0]
    assert "no option --set" in problems("replearn train in out --set train.iterations=3")[0]  # global: before
    assert "no option --per-class" in problems("replearn data digits out --per-class 4")[0]


def test_the_collector_finds_the_command_of_every_stage() -> None:
    """A broken pattern would find no command and so check nothing."""
    used = {words[1] for page in PAGES for usage in usages(page) if len(words := words_of(usage)) > 1}
    assert {"validate", "preprocess", "train", "evaluate", "export", "embed", "cluster", "data"} <= used


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_replearn_commands_name_real_subcommands_and_options(page: Path) -> None:
    wrong = [f"{usage!r}: {problem}" for usage in usages(page) for problem in problems(usage)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_relative_links_and_pictures_resolve(page: Path) -> None:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    targets = [target for target in LINK.findall(text) if not re.match(r"[a-z]+:|#", target)]
    missing = [target for target in targets if not (page.parent / target.split("#", 1)[0]).exists()]
    assert not missing, f"{page.name}: links to missing files: {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO_ROOT / target.split("#", 1)[0]).resolve() for target in LINK.findall(README.read_text())}
    assert DOCS, "no docs/*.md"
    unlinked = [str(page.relative_to(REPO_ROOT)) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"README.md links none of {unlinked}"


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move reference text to docs/"
