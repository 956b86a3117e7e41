"""The manual pages in docs/man/ build with docutils' manpage writer without a warning,
and each names every option its command accepts (read from the command's ``--help``
run as a process, or from its option parser where it has no ``--help``), so a new
option cannot be left out of its page."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from twisted.trial import unittest

TOP = os.path.join(os.path.dirname(__file__), os.pardir)
MAN = os.path.join(TOP, "docs", "man")
SRC = os.path.join(TOP, "src", "jsmail")

#: Each command, and how to run it from this checkout (the console scripts on PATH may be another's).
COMMANDS = {
    "twistd-jsmail": ["-c", "from twisted.scripts.twistd import run; run()", "jsmail"],
    "jsmail": ["-m", "jsmail.cli"],
    "jsmail-smtpd": ["-m", "jsmail.qmail.tcpserver"],
    "jsmail-sendmail": ["-m", "jsmail.qmail.sendmail"],
}
#: The command without ``--help`` (qmail-queue's command line has none).
WITHOUT_HELP = {"jsmail-queue": "qmail/queueprogram.py"}
PAGES = sorted([*COMMANDS, *WITHOUT_HELP])

_OPTION_LINE = re.compile(r"^\s+(-.*?)(?:\s{2,}|$)", re.M)
_SUBCOMMANDS = re.compile(r"^positional arguments:\n\s+\{([\w,]+)\}", re.M)


def helpText(command: str, *arguments: str) -> str:
    result = subprocess.run([sys.executable, *COMMANDS[command], *arguments, "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    if result.returncode != 0:
        raise AssertionError(f"{command} {' '.join(arguments)} --help: {result.stderr}")
    return result.stdout


def optionsInHelp(text: str) -> set[str]:
    """The options of the option list (``-c, --config=`` or ``--file FILE``)."""
    options = set()
    for listed in _OPTION_LINE.findall(text):
        options.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", listed))
    return options


def helpOptions(command: str, *path: str) -> tuple[set[str], set[str]]:
    """(options, subcommands) of ``command`` and its subcommands, all the way down."""
    text = helpText(command, *path)
    options, subcommands = optionsInHelp(text), set()
    found = _SUBCOMMANDS.search(text)
    for name in found.group(1).split(",") if found else ():
        subcommands.add(name)
        more, deeper = helpOptions(command, *path, name)
        options |= more
        subcommands |= deeper
    return options, subcommands


def parserOptions(path: str) -> set[str]:
    """The options a command without ``--help`` reads: getopt's, or the ``--`` words its main compares."""
    with open(os.path.join(SRC, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    options = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getopt":
            short, long = node.args[1], node.args[2]
            assert isinstance(short, ast.Constant) and isinstance(long, ast.List)
            options |= {"-" + letter for letter in short.value.replace(":", "")}
            options |= {"--" + str(item.value).rstrip("=") for item in long.elts if isinstance(item, ast.Constant)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"--[a-z-]+", node.value):
            options.add(node.value)
    return options


def page(name: str) -> str:
    with open(os.path.join(MAN, name + ".rst"), encoding="utf-8") as f:
        return f.read()


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


class ManPageTests(unittest.TestCase):
    def test_every_page_builds_without_warnings(self) -> None:
        from docutils.core import publish_string

        for name in PAGES:
            # halt_level 2: a warning is an exception, not a line on stderr.
            built = publish_string(page(name), source_path=name + ".rst", writer_name="manpage",
                                   settings_overrides={"report_level": 2, "halt_level": 2,
                                                       "output_encoding": "unicode"})
            self.assertIn(f'.TH "{name.upper()}" "8"', built.upper())

    def test_every_option_of_help_is_in_its_page(self) -> None:
        for name in COMMANDS:
            options, subcommands = helpOptions(name)
            self.assertIn("--help", options)  # the help was read
            text = page(name)
            self.assertEqual({o for o in options | subcommands if not mentions(text, o)}, set(), name)

    def test_every_option_of_the_parser_is_in_its_page(self) -> None:
        for name, source in WITHOUT_HELP.items():
            options = parserOptions(source)
            self.assertIn("--data", options)
            text = page(name)
            self.assertEqual({o for o in options if not mentions(text, o)}, set(), name)

    def test_every_command_has_a_page(self) -> None:
        """Every console script in setup.cfg, and twistd's plugin."""
        with open(os.path.join(TOP, "setup.cfg"), encoding="utf-8") as f:
            scripts = set(re.findall(r"^\s+(jsmail[\w-]*) = ", f.read(), re.M))
        self.assertEqual(scripts | {"twistd-jsmail"}, set(PAGES))
