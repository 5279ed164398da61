"""Command line: ``ann2snn {train,convert,energy,table,frontier,run} …``: the parser, ``main`` and
the mapping of errors to exit codes.  The commands themselves are :mod:`ann2snn.app.commands`.

Every config key can be overridden as ``--key value`` (dashes or underscores).  User mistakes
(bad keys or values, missing data, unusable checkpoints) print one paragraph and exit with status
2, without a traceback; an interrupt exits with 130.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import signal
import sys
import threading
from typing import Any, NoReturn

from ann2snn.app.commands import cmd_convert, cmd_energy, cmd_frontier, cmd_generate, cmd_run, cmd_table, cmd_train
from ann2snn.app.config import (FIELD_NAMES, MAX_STEPS, Config, ConfigError, check_steps, short_repr,
                                unknown_key_message)
from ann2snn.app.outputs import os_error_message
from ann2snn.progress import interrupted, note_interrupt

log = logging.getLogger("ann2snn")
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


# --------------------------------------------------------------------------------------------
# argument helpers
def parse_overrides(rest: list[str], options: tuple[str, ...] = ()) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs → {key: raw string}; keys must be config keys, each
    given once (a repeat, also spelt ``--extra-t`` then ``--extra_t``, is refused: the last one
    would win without a word).  ``options``: the command's own options, suggested for an unknown
    key that begins or resembles one (options are not abbreviated: ``--check`` is not
    ``--checkpoint``)."""
    out: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"Unexpected argument {short_repr(tok)}. Config overrides look like `--key value`.")
        key, eq, value = tok[2:].partition("=")
        flag, key = f"--{key}", key.replace("-", "_")
        if key not in FIELD_NAMES:
            raise _unknown_override(flag, key, options)
        if not eq:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
                raise ConfigError(f"--{key} needs a value, e.g. `--{key} {getattr(Config(), key)}`.")
            value = rest[i + 1]
            i += 1
        if key in out:
            raise ConfigError(f"{key} is given twice: {spelt[key]} {short_repr(out[key])} and {flag} "
                              f"{short_repr(value)}. Give --{key} once.")
        out[key], spelt[key] = value, flag
        i += 1
    return out


def _unknown_override(flag: str, key: str, options: tuple[str, ...]) -> ConfigError:
    """The error for ``flag`` (``--key``), not a config key: the closest key, or, when no key is
    close, the command's option it begins or resembles (``--check``: ``--checkpoint``)."""
    low = key[:100].lower()
    near: list[str] = []
    if not any(f.startswith(low) for f in FIELD_NAMES) and not difflib.get_close_matches(low, FIELD_NAMES, n=1):
        long = {o[2:]: o for o in options if o.startswith("--")}  # compared without the dashes
        near = [o for o in long.values() if o.startswith(flag) and len(flag) > 3]
        near = near or [long[c] for c in difflib.get_close_matches(low, list(long), n=1, cutoff=0.75)]
    if near:
        why = " (options are not abbreviated)" if near[0].startswith(flag) else ""
        return ConfigError(f"Unknown option {short_repr(flag)}: did you mean {near[0]}?{why}")
    return ConfigError(unknown_key_message(key))


def _energy_constants(text: str):
    from ann2snn.energy import resolve_constants

    try:
        return resolve_constants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _weight_bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 32:
        raise argparse.ArgumentTypeError(f"weight bits must be a whole number from 1 to 32, got {text[:40]!r}")
    return bits


# --------------------------------------------------------------------------------------------
# the parser
class _Parser(argparse.ArgumentParser):
    """argparse with the error format of every other user error: one line
    ``<prog>: error: <message> (see `<prog> --help`)`` and exit status 2, without the usage block
    (sub-command parsers are of this class too: add_subparsers uses the parent's class).

    No abbreviated options: with them a config override that is the prefix of an option was
    taken for that option without a word (`convert --l 8` set --latency-extra, not l)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def add_argument(self, *args, **kwargs):
        """Options that take a value are stored once: see _StoreOnce."""
        if args and str(args[0]).startswith("-") and kwargs.get("action", "store") == "store":
            kwargs["action"] = _StoreOnce
        return super().add_argument(*args, **kwargs)


# what to do when an option is given twice, by its dest (default: give it once)
_TWICE_HINT = {"config": "only one config file is read: merge them into one, or override single keys with "
                         "--key value"}


class _StoreOnce(argparse.Action):
    """argparse's ``store``, except that an option given twice (``-c a.yml -c b.yml``,
    ``--checkpoint A --checkpoint=B``) is an error naming both values: argparse would keep the
    last one without a word.  What was given is recorded in ``namespace._given`` (dest ->
    (value, option string)), which :func:`main` checks against the config overrides
    (``table --extra-t 0-4 --extra_t 2``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", {})
        if self.dest in given:
            first, flag = given[self.dest]
            hint = _TWICE_HINT.get(self.dest, f"give {option_string} once")
            parser.error(f"{'/'.join(self.option_strings)} is given twice: {flag} {_shown(first)} and "
                         f"{option_string} {_shown(values)}; {hint}")
        given[self.dest] = (values, option_string)
        setattr(namespace, self.dest, values)


def _shown(value: Any) -> str:
    """An option's value in a message: its name when it has one (energy constants), else a short repr."""
    name = getattr(value, "name", None)
    return repr(name) if isinstance(name, str) else short_repr(value)


def _count(text: str) -> int:
    """A count of at least 1 (prompts, tokens)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {short_repr(text)}") from None
    if not 1 <= value <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_STEPS}, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {short_repr(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value} (omit it to measure on every test batch)")
    return value


def _steps(text: str) -> int:
    """A number of extra time steps: 0 .. MAX_STEPS (:func:`ann2snn.app.config.check_steps`)."""
    try:
        return check_steps("the number of steps", int(text), 0, "")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, got {short_repr(text)}") from None


def _common(sp, config_required: bool = False) -> None:
    sp.add_argument("-c", "--config", required=config_required, help="YAML config file")
    sp.add_argument("--out", help="output directory")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _energy_options(sp) -> None:
    sp.add_argument("--constants", default="fp32", type=_energy_constants,
                    help="pJ per MAC/AC: fp32 (4.6/0.9), fp16 (1.5/0.4), int8 (0.23/0.03) or 'MAC,AC'")
    sp.add_argument("--first-layer", dest="first_layer", choices=("once", "per_step"), default="once",
                    help="image-fed layer's MACs: once (papers' convention) or on every input step")
    sp.add_argument("--weight-bits", dest="weight_bits", type=_weight_bits, default=8,
                    help="second (memory) model: weight width in bits of the SNN and its equal-bit QNN (default 8)")
    sp.add_argument("--weight-reads", dest="weight_reads", choices=("best", "event", "dense"), default="best",
                    help="second (memory) model: the SNN reads a weight per synaptic event (event), every weight "
                         "once per step (dense), or per layer the cheaper of the two (best, default)")


def _latency_option(sp) -> None:
    sp.add_argument("--latency-extra", dest="latency_extra", type=_steps, default=0, metavar="N",
                    help="observe N more zero-input steps after t + extra_t for the effective latency only "
                         "(accuracy and energy stay at t + extra_t)")


def _row_options(sp, rows: str, extra_t: str, extra_help: str) -> None:
    """A table's ``--t`` (rows) and ``--extra-t`` (extra steps), step specifications
    (:func:`ann2snn.app.config.parse_steps`: numbers, ranges, lists, L symbols)."""
    sp.add_argument("--t", default=rows, help=f"rows t (input steps): e.g. {rows}, 1-12 or 1,2,4 (L: the QCFS levels)")
    sp.add_argument("--extra-t", "--extra_t", dest="extra_t", default=extra_t, help=extra_help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ann2snn", description=__doc__.splitlines()[0],
                epilog="Any config key can be given as --key value; see README.md.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("train", help="train a model (QCFS ANN or direct SNN)")
    _common(sp, config_required=True)
    sp.add_argument("--resume", action="store_true", help="continue the run in --out / runs/<id> from last.pt")
    sp.add_argument("--extend", action="store_true",
                    help="with --resume: lengthen the run to a larger --epochs N (the cosine schedule is rebuilt)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("convert", help="convert a trained ANN and print per-step SNN accuracy")
    _common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--energy", action="store_true", help="print the per-layer energy table (see `energy`)")
    sp.add_argument("--verify", action="store_true",
                    help="print the self-check: max |SNN - quantized ANN| once quiescent, and the settle steps")
    _latency_option(sp)
    _energy_options(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("energy", help="per-layer firing rates, FLOPs, SOPs and energy per image")
    _common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--csv", help="also write the per-layer rows to this CSV file")
    sp.add_argument("--max-batches", dest="max_batches", type=_positive_int,
                    help="measure on the first N test batches (N >= 1)")
    _latency_option(sp)
    _energy_options(sp)
    sp.set_defaults(func=cmd_energy)

    sp = sub.add_parser("table", help="t × (t + extra_t) accuracy table")
    _common(sp)
    sp.add_argument("--checkpoint")
    _row_options(sp, "1-8", "0-4", "extra zero-input steps per row: e.g. 0-4 or 0-L")
    sp.set_defaults(func=cmd_table)

    sp = sub.add_parser("frontier", help="accuracy against total steps and energy, across spike levels")
    _common(sp)
    sp.add_argument("--checkpoint")
    sp.add_argument("--spike-levels", "--spike_levels", "--levels", dest="spike_levels", default="1,2,L",
                    help="spike levels m to compare: e.g. 1,2,L or 1,L/2,L (--levels is the old spelling)")
    _row_options(sp, "1-2L", "0-L",
                 "extra zero-input steps tried per row; a row keeps extra_t = 0 and the fewest that reach its best")
    sp.add_argument("--energy-batches", dest="energy_batches", type=_positive_int, default=4,
                    help="measure each point's energy on the first N test batches")
    _energy_options(sp)
    sp.set_defaults(func=cmd_frontier)

    sp = sub.add_parser("generate", help="greedy text generation by a converted language model, beside its QANN")
    _common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--prompt", action="append", help="prompt text (repeatable); the model continues it")
    sp.add_argument("--test-prompts", dest="test_prompts", type=_count, default=0, metavar="K",
                    help="also continue the first half of each of the first K test windows")
    sp.add_argument("--max-new-tokens", dest="max_new_tokens", type=_count, default=32, metavar="N",
                    help="tokens to generate per prompt (default 32); the SNN runs t + extra_t steps for each")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("run", help="do what an original-style config's action/mode keys say")
    _common(sp, config_required=True)
    sp.add_argument("--checkpoint")
    sp.add_argument("--json")
    sp.add_argument("--resume", action="store_true")
    sp.set_defaults(func=cmd_run)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from ann2snn.app.checkpoint import CheckpointError
    from ann2snn.app.data import DataError
    from ann2snn.graph import ConversionError
    from ann2snn.app.train import TrainingError

    return USER_ERRORS + (CheckpointError, ConversionError, DataError, TrainingError)


def _on_sigint(signum, frame) -> NoReturn:
    """main's SIGINT handler: remember the interrupt, then raise KeyboardInterrupt as Python's own
    handler does.  Remembered because the KeyboardInterrupt need not reach main intact: landing
    inside a lazy import (torch.fx importing sympy while tracing) it leaves a half-imported module
    whose AttributeError then surfaces, and would be reported, as a model error; or it is
    swallowed there, and the next progress step raises it again (ann2snn.progress)."""
    note_interrupt()
    raise KeyboardInterrupt


def _install_sigint():
    """Install :func:`_on_sigint`; the handler it replaces (None: nothing installed, since only
    the main thread can, and a SIGINT that is ignored -- a background job -- stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous in (None, signal.SIG_IGN):
        return None
    signal.signal(signal.SIGINT, _on_sigint)
    return previous


def _options_of(parser: argparse.ArgumentParser, command: str) -> tuple[str, ...]:
    """The option strings of sub-command ``command`` (for suggestions)."""
    for action in parser._actions:  # argparse keeps the sub-parsers only there
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return tuple(action.choices[command]._option_string_actions)
    return ()


def _error_message(err: BaseException) -> str | None:
    """The one line main prints for a user error or an OS fault; None for anything else."""
    if isinstance(err, _user_errors()):
        return str(err)
    if isinstance(err, OSError):  # an OS fault no check caught (a disk filling up mid-run, …): no traceback
        return os_error_message(err)
    return None


def main(argv: list[str] | None = None) -> int:
    note_interrupt(False)
    previous = _install_sigint()
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        note_interrupt(False)  # the record lives while main runs: API calls after it are not interrupted


def _run(argv: list[str] | None) -> int:
    command = "?"
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        command = args.command
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
        overrides = parse_overrides(rest, _options_of(parser, command))
        given = getattr(args, "_given", {})
        for key in overrides:  # `table --extra-t 0-4 --extra_t 2`: an option and an override of one name
            if key in given:
                raise ConfigError(f"{key} is given twice: {given[key][1]} {_shown(given[key][0])} and --{key} "
                                  f"{short_repr(overrides[key])}. Give it once.")
        return args.func(args, overrides)
    except BaseException as err:
        # an interrupt is reported as one, whatever error it turned into on its way up
        if interrupted() or isinstance(err, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        message = None if isinstance(err, SystemExit) else _error_message(err)
        if message is None:
            raise
        print(f"ann2snn {command}: error: {message}", file=sys.stderr)
        return 2
