"""The README documents what users can type: every config key, every sub-command and each of its
options (as a whole word, in that sub-command's own section), and its Python API example runs."""
import re
from pathlib import Path

import pytest

from ann2snn.app.cli import build_parser
from ann2snn.app.config import FIELD_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMON = ("--config", "--verbose", "--out")  # documented once, for every command, in "## Commands"


def test_every_config_key_is_in_the_readme_table():
    missing = [k for k in FIELD_NAMES if f"| `{k}` |" not in README]
    assert not missing, f"config keys missing from README's 'Config keys' table: {missing}"


def _subcommands():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_every_subcommand_is_documented():
    missing = [name for name in _subcommands() if f"### `ann2snn {name}" not in README]
    assert not missing, f"sub-commands without a README section: {missing}"


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make quickstart", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def section(name: str) -> str:
    """The README text from ``### `ann2snn NAME`` to the next heading."""
    start = README.index(f"### `ann2snn {name}")
    rest = README[start + 4:]
    end = min((i for i in (rest.find("\n### "), rest.find("\n## ")) if i >= 0), default=len(rest))
    return README[start:start + 4 + end]


def mentions(text: str, opt: str) -> bool:
    """``opt`` as a whole option word (``--t`` is not found inside ``--table`` or ``--extra-t``)."""
    forms = {opt, "--" + opt[2:].replace("-", "_")}
    return any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text) for f in forms)


def test_every_subcommand_option_is_documented_in_its_own_section():
    commands = README.split("## Commands", 1)[1].split("\n### ", 1)[0]
    assert all(mentions(commands, opt) for opt in COMMON)
    missing = [f"{name} {opt}" for name, sp in _subcommands().items() for a in sp._actions
               for opt in a.option_strings if opt.startswith("--") and opt != "--help" and opt not in COMMON
               and not mentions(section(name), opt)]
    assert not missing, f"command-line options missing from their sub-command's README section: {missing}"


def test_the_option_check_would_catch_a_missing_option():
    """The whole-word rule: ``--t`` is not documented by ``--extra-t``, nor ``--out`` by ``--out_root``."""
    assert not mentions("--extra-t 0 --out_root DIR --json_x", "--t")
    assert not mentions("--out_root DIR", "--out") and not mentions("--jsonl", "--json")
    assert mentions("[--t 8]", "--t") and mentions("`--extra_t`", "--extra-t")


@pytest.mark.slow
def test_python_api_example_runs(monkeypatch, capsys):
    """The README's "Python API" example, executed as written, from the repository root."""
    block = README.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md (Python API)", "exec"), scope)
    out = capsys.readouterr().out
    assert "k-step runs" in out and "E_SNN per image" in out
    res, table, energy = scope["res"], scope["table"], scope["energy"]
    assert res.k_step.k == [1, 2, 3, 4] and sorted(table) == [1, 2, 4]
    # the example's k-step run with k = 4 and its table cell (4, 4 + 2) are the same run
    assert res.k_step.top1[3] == table[4].top1[2]
    assert energy.totals.e_snn_mj > 0 and res.ann.top1 > 20  # one epoch learns something


@pytest.mark.parametrize("words", ["≈99", "measured below", "energy_digits.png"])
def test_readme_quotes_no_figure_that_no_command_regenerates(words):
    assert words not in README
