"""Command line: ``ann2snn {train,convert,table,run} …``.

Every config key can be overridden as ``--key value`` (dashes or underscores).  User mistakes
(bad keys or values, missing data, unusable checkpoints) print one paragraph and exit with status
2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ann2snn.config import FIELD_NAMES, Config, ConfigError, load_config, unknown_key_message

log = logging.getLogger("ann2snn")
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


# --------------------------------------------------------------------------------------------
# argument helpers
def parse_overrides(rest: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs → {key: raw string}; keys must be config keys."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"Unexpected argument {tok!r}. Config overrides look like `--key value`.")
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key not in FIELD_NAMES:
            raise ConfigError(unknown_key_message(key))
        if not eq:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
                raise ConfigError(f"--{key} needs a value, e.g. `--{key} {getattr(Config(), key)}`.")
            value = rest[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def parse_range(text: str, name: str, minimum: int) -> list[int]:
    """'1-12' → [1..12]; '1,2,4' → [1,2,4]; '8' → [8]."""
    vals: list[int] = []
    try:
        for part in str(text).split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                vals.extend(range(int(a), int(b) + 1))
            else:
                vals.append(int(part))
    except ValueError:
        raise ConfigError(f"{name} must be a number, a range like 1-12, or a list like 1,2,4; got {text!r}.") from None
    if not vals or min(vals) < minimum:
        raise ConfigError(f"{name} values must be >= {minimum}; got {text!r}.")
    return sorted(set(vals))


# --------------------------------------------------------------------------------------------
# model resolution shared by convert / table
def latest_run(out_root: str) -> Path:
    marker = Path(out_root) / "LATEST"
    if marker.is_file():
        run = Path(marker.read_text().strip())
        if (run / "best_model.pt").is_file():
            return run
    raise ConfigError(f"No trained run found under {out_root!r} (no {marker} pointing at a best_model.pt). "
                      "Train first (`ann2snn train -c configs/digits.yml`), or pass -c CONFIG / "
                      "--checkpoint PATH.")


def resolve(args, overrides: dict[str, Any]):
    """(config, checkpoint path, run dir) from -c / --checkpoint / the latest run."""
    from ann2snn.checkpoint import checkpoint_config, load_checkpoint

    if args.config:
        cfg = load_config(args.config, overrides)
        ckpt = Path(args.checkpoint or cfg.model_path or cfg.run_dir / "best_model.pt")
    elif args.checkpoint:
        ckpt = Path(args.checkpoint)
        stored = checkpoint_config(load_checkpoint(ckpt), ckpt)
        cfg = load_config(None, {**stored.to_dict(), **overrides})
    else:
        run = latest_run(overrides.get("out_root", "runs"))
        cfg = load_config(run / "config.yaml", overrides)
        ckpt = run / "best_model.pt"
    return cfg, ckpt, ckpt.parent


def load_trained(cfg: Config, ckpt_path: Path):
    """Data loaders and the trained model of ``ckpt_path`` (checked against ``cfg``)."""
    from ann2snn import distributed
    from ann2snn.checkpoint import check_compatible, checkpoint_config, load_checkpoint, load_state
    from ann2snn.train import build_model

    ckpt = load_checkpoint(ckpt_path)
    check_compatible(checkpoint_config(ckpt, ckpt_path), cfg, ckpt_path)
    ctx = distributed.setup(cfg)  # under torchrun: rank r evaluates test batches r, r+W, ...
    _, test_loader, info = distributed.build_loaders(cfg, ctx)
    model = build_model(cfg, info)
    load_state(model, ckpt["model"], ckpt_path)
    return model.to(ctx.device).eval(), test_loader, info


def eval_dir(run_dir: Path, ckpt: Path, kind: str, preset: str) -> Path:
    """Where an evaluation of checkpoint ``ckpt`` writes by default: ``<its folder>/<kind>-<its
    name>-<preset>``, so that two checkpoints in one folder never overwrite each other's results."""
    return run_dir / f"{kind}-{ckpt.stem}-{preset}"


def _is_main() -> bool:
    """False on torchrun ranks other than 0 (they compute but do not print or write)."""
    from ann2snn import distributed

    return distributed.is_main()


# --------------------------------------------------------------------------------------------
# commands
def cmd_train(args, overrides) -> int:
    from ann2snn.train import train

    cfg = load_config(args.config, overrides)
    res = train(cfg, out=args.out, resume=args.resume)
    if _is_main():
        print(f"best test top-1 {res['best_top1']:.2f}%  ->  {res['run_dir']}")
    return 0


def cmd_convert(args, overrides) -> int:
    from ann2snn.energy import EnergyMeter, flops_per_module
    from ann2snn.metrics import device_of, evaluate
    from ann2snn.plots import write_convert_plots
    from ann2snn.report import format_energy_table, format_steps, summary_line, write_json
    from ann2snn.simulate import simulator_for

    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "eval", cfg.preset)
    model, loader, _ = load_trained(cfg, ckpt)
    sim = simulator_for(model, cfg)
    latency_extra = getattr(args, "latency_extra", 0)  # `run` has no --latency-extra
    with EnergyMeter.for_simulator(sim) as meter:  # firing rates and operations of the t-step run
        res = evaluate(sim, loader, cfg.t, cfg.extra_t, ann=model, meter=meter, latency_extra=latency_extra)
    result = {"ann": res["ann"],
              "snn": {"t": cfg.t, "extra_t": cfg.extra_t, "preset": cfg.preset, "k_step": res["k_step"],
                      "k_step_is_prefix": res["k_step_is_prefix"], "within_run": res["within_run"]},
              "effective_latency": res["effective_latency"], "checkpoint": str(ckpt), "n": res["n"]}
    if not _is_main():  # under torchrun only rank 0 reports and writes
        return 0
    sample = next(iter(loader))[0][:1].to(device_of(model))
    energy = meter.result(flops_per_module(sim, model, sample), cfg.t, cfg.extra_t,
                          getattr(args, "constants", "fp32"), getattr(args, "first_layer", "once"))
    energy["effective_latency"] = res["effective_latency"]  # (rank 0's shard under torchrun)
    full = getattr(args, "energy", False)  # `run` has no --energy
    result.update({"energy": energy} if full else {"energy_totals": energy["totals"]})
    print(format_steps(result))
    print(format_energy_table(energy) if full else summary_line(energy))
    write_json(out / f"convert_t{cfg.t}_e{cfg.extra_t}.json", result)
    write_convert_plots(result, energy, out)
    if args.json:
        write_json(Path(args.json), result)
    print(f"written: {out}")
    return 0


def cmd_energy(args, overrides) -> int:
    from ann2snn.energy import measure_energy
    from ann2snn.plots import write_energy_plots
    from ann2snn.report import format_energy_table, write_energy_csv, write_energy_json
    from ann2snn.simulate import simulator_for

    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "energy", cfg.preset)
    model, loader, _ = load_trained(cfg, ckpt)
    res = measure_energy(model, simulator_for(model, cfg), loader, cfg.t, cfg.extra_t, args.constants,
                         args.max_batches, args.first_layer, latency_extra=args.latency_extra)
    if not _is_main():
        return 0
    res.update(checkpoint=str(ckpt), preset=cfg.preset)
    print(format_energy_table(res))
    write_energy_json(out / f"energy_t{cfg.t}_e{cfg.extra_t}.json", res)
    write_energy_csv(out / f"energy_t{cfg.t}_e{cfg.extra_t}.csv", res)
    write_energy_plots(res, out)
    for path, write in ((args.json, write_energy_json), (args.csv, write_energy_csv)):
        if path:
            write(path, res)
    print(f"written: {out}")
    return 0


def cmd_table(args, overrides) -> int:
    from ann2snn.metrics import evaluate_ann, evaluate_table
    from ann2snn.report import write_table
    from ann2snn.simulate import simulator_for

    rows = parse_range(args.t, "--t", 1)
    extras = parse_range(args.extra_t, "--extra-t", 0)
    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "table", cfg.preset)
    model, loader, _ = load_trained(cfg, ckpt)
    t0 = time.perf_counter()
    ann = evaluate_ann(model, loader)
    t1 = time.perf_counter()
    table = evaluate_table(simulator_for(model, cfg), loader, rows, max(extras))
    t2 = time.perf_counter()
    timing = {"ann_eval_s": round(t1 - t0, 3), "table_s": round(t2 - t1, 3),
              "table_over_ann_eval": round((t2 - t1) / max(t1 - t0, 1e-9), 2)}
    if _is_main():  # under torchrun only rank 0 writes
        write_table(out, ann, table, extras, meta={"checkpoint": str(ckpt), "preset": cfg.preset, "n": ann["n"],
                                                    "timing": timing})
        print(f"time: ANN evaluation {timing['ann_eval_s']:.2f} s, table {timing['table_s']:.2f} s "
              f"({timing['table_over_ann_eval']:.1f}x the ANN evaluation, same data, one run)")
        from ann2snn.plots import NAMES, plot_table_heatmap

        print(f"heatmap: {plot_table_heatmap(ann, table, extras, out / NAMES['heatmap'])}")
    return 0


def cmd_run(args, overrides) -> int:
    """Run what an original-style config's ``action``/``mode`` keys ask for."""
    cfg = load_config(args.config, overrides)
    if cfg.action == "train":
        return cmd_train(args, overrides)
    # --checkpoint on the command line wins over the config's model_path
    args.checkpoint = getattr(args, "checkpoint", None) or cfg.model_path
    if args.checkpoint is None:
        raise ConfigError("action: test needs a checkpoint to evaluate: set model_path in the config "
                          "or pass --checkpoint PATH.")
    if cfg.mode == "ann":
        from ann2snn.metrics import evaluate_ann

        model, loader, _ = load_trained(cfg, Path(args.checkpoint))
        ann = evaluate_ann(model, loader)
        if _is_main():
            print(f"ANN top-1 {ann['top1']:.2f}%  top-5 {ann['top5']:.2f}%  loss {ann['loss']:.4f}")
        return 0
    return cmd_convert(args, overrides)


def _energy_constants(text: str):
    from ann2snn.energy import resolve_constants

    try:
        return resolve_constants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ann2snn", description=__doc__.splitlines()[0],
                                epilog="Any config key can be given as --key value; see README.md.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=False):
        sp.add_argument("-c", "--config", required=config_required, help="YAML config file")
        sp.add_argument("--out", help="output directory")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    def energy_options(sp):
        sp.add_argument("--constants", default="fp32", type=_energy_constants,
                        help="pJ per MAC/AC: fp32 (4.6/0.9), fp16 (1.5/0.4), int8 (0.23/0.03) or 'MAC,AC'")
        sp.add_argument("--first-layer", dest="first_layer", choices=("once", "per_step"), default="once",
                        help="image-fed layer's MACs: once (papers' convention) or on every input step")

    def latency_option(sp):
        sp.add_argument("--latency-extra", dest="latency_extra", type=int, default=0, metavar="N",
                        help="observe N more zero-input steps after t + extra_t for the effective latency only "
                             "(accuracy and energy stay at t + extra_t)")

    sp = sub.add_parser("train", help="train a model (QCFS ANN or direct SNN)")
    common(sp, config_required=True)
    sp.add_argument("--resume", action="store_true", help="continue the run in --out / runs/<id> from last.pt")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("convert", help="convert a trained ANN and print per-step SNN accuracy")
    common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--energy", action="store_true", help="print the per-layer energy table (see `energy`)")
    latency_option(sp)
    energy_options(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("energy", help="per-layer firing rates, FLOPs, SOPs and energy per image")
    common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--csv", help="also write the per-layer rows to this CSV file")
    sp.add_argument("--max-batches", dest="max_batches", type=int, help="measure on the first N test batches")
    latency_option(sp)
    energy_options(sp)
    sp.set_defaults(func=cmd_energy)

    sp = sub.add_parser("table", help="t × (t + extra_t) accuracy table")
    common(sp)
    sp.add_argument("--checkpoint")
    sp.add_argument("--t", default="1-8", help="rows: e.g. 1-12 or 1,2,4,8")
    sp.add_argument("--extra-t", dest="extra_t", default="0-4", help="extra steps per row: e.g. 0-4")
    sp.set_defaults(func=cmd_table)

    sp = sub.add_parser("run", help="do what an original-style config's action/mode keys say")
    common(sp, config_required=True)
    sp.add_argument("--checkpoint")
    sp.add_argument("--json")
    sp.add_argument("--resume", action="store_true")
    sp.set_defaults(func=cmd_run)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from ann2snn.checkpoint import CheckpointError
    from ann2snn.data import DataError
    from ann2snn.train import TrainingError

    return USER_ERRORS + (CheckpointError, DataError, TrainingError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        overrides = parse_overrides(rest)
        return args.func(args, overrides)
    except _user_errors() as err:
        print(f"ann2snn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
