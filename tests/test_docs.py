"""The README documents what users can type: every config key and every sub-command."""
from pathlib import Path

from ann2snn.cli import build_parser
from ann2snn.config import FIELD_NAMES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_config_key_is_in_the_readme_table():
    missing = [k for k in FIELD_NAMES if f"| `{k}` |" not in README]
    assert not missing, f"config keys missing from README's 'Config keys' table: {missing}"


def test_every_subcommand_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"ann2snn {name}" not in README]
    assert not missing, f"sub-commands missing from README: {missing}"


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make quickstart", "make test"]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_subcommand_option_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [f"{name} {opt}" for name, sp in sub.choices.items() for a in sp._actions
               for opt in a.option_strings if opt.startswith("--") and opt != "--help"
               and f"{opt}" not in README and opt.replace("-", "_") not in README]
    assert not missing, f"command-line options missing from README: {missing}"
