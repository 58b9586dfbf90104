"""Every command explains itself: each option and argument has help text, and the help
printed for each command shows no raw type such as `<bool>` beside a flag."""

from __future__ import annotations

from collections.abc import Iterator

import typer

from nurture.cli import app


def commands(command: object, path: str = "nurture") -> Iterator[tuple[str, object]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in sorted(subcommands.items()):
        yield from commands(sub, f"{path} {name}")


ROOT = typer.main.get_command(app)
ALL = list(commands(ROOT))


def test_the_tree_has_the_contract_commands():
    names = {path for path, _ in ALL}
    assert {"nurture lead show", "nurture handoff reject", "nurture outbox", "nurture event"} <= names


def test_every_option_and_argument_of_every_command_has_help():
    missing = [f"{path} {param.name}" for path, command in ALL for param in command.params
               if not (getattr(param, "help", None) or "").strip()]
    assert missing == []


def test_help_shows_no_raw_type_beside_a_flag():
    for path, command in ALL:
        text = command.get_help(command.context_class(command, info_name=path))
        assert "<bool>" not in text, (path, text)
