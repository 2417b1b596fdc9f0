"""The README's commands and recipes: the quick start pastes one command at a time, the
Compose file is valid YAML that exposes only what it says, and the systemd units run the
commands this program has."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from ingress_box.cli.main import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _section(title: str) -> str:
    return README.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(text) if lang == language]


def _commands(block: str) -> list[str]:
    """The command lines of a shell block: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", block)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def _runs_until_stopped(command: str) -> bool:
    """serve, worker and docker run in the foreground keep the terminal until Ctrl-C."""
    words = command.split()  # not shlex: a quoted JSON body may span lines
    if "docker" in words and "run" in words:
        return "-d" not in words and "--rm" not in words
    return bool({"serve", "worker"} & set(words)) and "exec" not in words


def test_the_two_newcomer_commands_open_the_quick_start() -> None:
    """The quick start's first two blocks are the install-and-serve and the test command."""
    first, second = _blocks(_section("## Quick start"), "sh")[:2]
    assert _commands(first) == ["pip install . && ingress-box serve"]
    assert _commands(second) == ["pip install '.[test]' && python -m pytest -n 2"]


def test_a_command_that_keeps_the_terminal_ends_its_block() -> None:
    """Pasting a block never leaves commands waiting behind serve (or a foreground docker run):
    such a command is the last of its block."""
    for block in _blocks(README, "sh"):
        commands = _commands(block)
        for command in commands[:-1]:
            assert not _runs_until_stopped(command), f"{command!r} blocks the rest of:\n{block}"


def test_the_quick_start_sets_the_token_for_pip_and_for_docker() -> None:
    """The token is the printed ibx_ one for pip, the passed one for Docker; both are said."""
    first = _section("### Receive your first webhook")
    token_line = next(c for b in _blocks(first, "sh") for c in _commands(b) if "TOKEN=" in c)
    assert token_line.startswith("TOKEN=ibx_")
    assert "printed" in first and "INGRESS_BOX_ADMIN_TOKEN" in first
    assert "/admin/ui/" in _section("## Quick start")


def _compose() -> dict[str, Any]:
    (block,) = _blocks(_section("## Deploy"), "yaml")
    data: dict[str, Any] = yaml.safe_load(block)
    return data


def test_the_compose_file_exposes_only_caddy_and_a_loopback_admin() -> None:
    """Caddy alone publishes public ports; the box's port is on the machine's loopback."""
    services = _compose()["services"]
    assert {"caddy", "box", "waha", "chatwoot", "postgres", "redis"} <= set(services)
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"caddy", "box"}
    assert all(port.startswith("127.0.0.1:") for port in published["box"])
    assert services["box"]["environment"]["INGRESS_BOX_PUBLIC_URL"].startswith("https://")
    declared = set(_compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(".") or source in declared, volume


def test_caddy_passes_only_the_ingress_to_the_box() -> None:
    """The public name proxies /ingress/* to the box and answers 404 for the rest."""
    caddyfile = _section("## Deploy").split("`Caddyfile` beside it:", 1)[1]
    (block,) = BLOCK.findall(caddyfile)[:1]
    hooks = block[1].split("chat.example.com", 1)[0]
    assert "handle /ingress/* {\n\t\treverse_proxy box:8080" in hooks
    assert "respond 404" in hooks and hooks.count("reverse_proxy") == 1


def _exec_lines() -> list[str]:
    lines = []
    for block in _blocks(_section("## Deploy"), "ini"):
        lines += [line.split("=", 1)[1] for line in block.splitlines() if line.startswith("Exec")]
    return lines


def _is_a_command(words: list[str]) -> bool:
    command: click.Command = main
    for word in words:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        if word not in command.commands:
            return False
        command = command.commands[word]
    return command is not main


@pytest.mark.parametrize("needed", ["serve", "backup"])
def test_the_systemd_units_run_the_single_file(needed: str) -> None:
    """The service runs the single file's serve, the backup service its backup into a folder."""
    runs = [shlex.split(line) for line in _exec_lines() if "ingress-box.pyz" in line]
    found = [words for words in runs if words[2] == needed]
    assert found, runs
    for words in found:
        assert words[0].startswith("/usr/bin/python3") and _is_a_command(words[2:])
    if needed == "backup":
        assert found[0][-1].endswith("/")


def test_the_units_are_ini_with_the_sections_systemd_wants() -> None:
    """Each unit block parses; the service, the backup and its timer have their sections."""
    sections = []
    for block in _blocks(_section("## Deploy"), "ini"):
        # systemd repeats keys (Environment=, ExecStart=), which strict parsing refuses.
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(block)
        sections.append(set(parser.sections()))
    assert {"Unit", "Service", "Install"} in sections
    assert {"Unit", "Service"} in sections
    assert {"Unit", "Timer", "Install"} in sections
