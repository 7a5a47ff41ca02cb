"""CLI conventions: every option and argument has a help text, ``--version``, ``--help`` without importing torch,
one-line errors with ``--debug`` for the traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import deepmetric
from deepmetric import cli


def _parsers(parser: argparse.ArgumentParser, name: str = "deepmetric"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_and_command_has_a_help_text():
    missing = []
    for name, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {a.dest}" for a in action._choices_actions if not (a.help or "").strip()]
            elif not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == [], f"arguments without a help text: {missing}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"deepmetric {deepmetric.__version__}"


@pytest.mark.parametrize("command", [[], ["train"], ["index", "build"], ["serve"], ["compare"]])
def test_help_does_not_import_torch(command):
    code = (
        "import sys\n"
        "from deepmetric.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'faiss', 'mlflow') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: deepmetric" in out
    assert out.strip().splitlines()[-1] == "HEAVY []"


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "no-such-run")
    plain = subprocess.run([sys.executable, "-m", "deepmetric", "evaluate", missing], capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [f"deepmetric: {missing} is not a run directory (no config.yaml)"]
    debug = subprocess.run(
        [sys.executable, "-m", "deepmetric", "--debug", "evaluate", missing], capture_output=True, text=True
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr


def test_an_unexpected_error_names_its_type_and_points_to_debug(monkeypatch, capsys):
    def boom(args):
        raise OSError(28, "No space left on device")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["report"].set_defaults(func=boom)
    assert cli.main(["report", "somewhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("deepmetric: OSError: [Errno 28] No space left on device")
    assert err[0].endswith("(run again with --debug for the traceback)")
    with pytest.raises(OSError):
        cli.main(["--debug", "report", "somewhere"])


def test_a_multi_line_message_is_printed_on_one_line(monkeypatch, capsys):
    def boom(args):
        raise ValueError("Error(s) in loading state_dict for Embedder:\n\tsize mismatch for head.weight\n")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["report"].set_defaults(func=boom)
    assert cli.main(["report", "somewhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["deepmetric: Error(s) in loading state_dict for Embedder: size mismatch for head.weight"]

    def listed(args):
        raise FileNotFoundError("Fashion-MNIST not found. Tried, in order:\n  /a/train.gz\n  /b/train.gz\nInstall it")

    parser._subparsers._group_actions[0].choices["report"].set_defaults(func=listed)
    assert cli.main(["report", "somewhere"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deepmetric: Fashion-MNIST not found. Tried, in order: /a/train.gz; /b/train.gz; Install it"
    )
