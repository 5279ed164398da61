"""The sub-commands of ``ann2snn``: ``train``, ``convert``, ``energy``, ``table``, ``frontier`` and
``run``, and what they share.

Every command that evaluates a trained model begins with the same preamble, :func:`prepare`:
resolve the config and the checkpoint (-c, --checkpoint, or the latest run), parse the command's
step options, pick the output folder, check every output path before any work, then load the
trained model with its test data and build its simulator.  The rest of each command is its own
measurement and its report.

The torch-heavy modules are imported inside the commands, so that ``ann2snn --help`` answers at
once and Ctrl-C works while they load (:func:`ann2snn.app.cli.main` installs its handler first).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ann2snn.app.config import Config, ConfigError, load_config, parse_steps, read_config_file
from ann2snn.app.outputs import preflight_outputs
from ann2snn.app.rundir import LATEST, read_latest

log = logging.getLogger("ann2snn")


# --------------------------------------------------------------------------------------------
# which config and which checkpoint
def latest_run(out_root: str) -> Path:
    """The run ``<out_root>/LATEST`` names; a ConfigError when there is none, the marker is
    corrupt, or the run it names has no best_model.pt (moved or deleted)."""
    marker = Path(out_root) / LATEST
    run = read_latest(out_root)
    if run is None:
        raise ConfigError(f"No trained run found under {out_root!r} (no {marker} pointing at a best_model.pt). "
                          "Train first (`ann2snn train -c configs/digits.yml`), or pass -c CONFIG / "
                          "--checkpoint PATH.")
    if not (run / "best_model.pt").is_file():
        raise ConfigError(f"{str(marker)!r} names the run {str(run)!r}, which holds no best_model.pt (it was moved "
                          f"or deleted). Pass -c CONFIG or --checkpoint PATH, or delete {marker} and train again.")
    return run


def config_from_args(args, overrides: dict[str, Any]) -> Config:
    """The config of ``-c`` with ``overrides``.  The file is read once per invocation (its
    mapping is kept on ``args``): ``-c /dev/stdin`` or ``-c <(…)`` is a pipe that can be read only
    once, and `run` loads the config once itself and once more in the command it hands over to."""
    raw = getattr(args, "_config_raw", None)
    if raw is None:
        raw = read_config_file(args.config)
        args._config_raw = raw
    return load_config(args.config, overrides, raw=raw)


def checkpoint_file(text: str, flag: str = "--checkpoint") -> Path:
    """The checkpoint file ``text`` names (given with ``flag``): refused when empty (an empty
    --checkpoint would silently fall back to the config's or the latest run) or a folder (which
    load_checkpoint would report as missing), suggesting the folder's best_model.pt."""
    if not str(text).strip():
        raise ConfigError(f"{flag} is empty; pass a file or omit it (then the config's run, or the latest run, is "
                          "evaluated).")
    path = Path(text)
    if path.is_dir():
        best = path / "best_model.pt"
        fix = (f"did you mean `{flag} {best}`?" if best.is_file()
               else "pass a checkpoint file, e.g. a run's best_model.pt or last.pt.")
        raise ConfigError(f"{flag} {str(path)!r} is a folder, not a checkpoint file; {fix}")
    return path


def resolve(args, overrides: dict[str, Any]) -> tuple[Config, Path, Path]:
    """(config, checkpoint path, run dir) from -c / --checkpoint / the latest run."""
    from ann2snn.app.checkpoint import checkpoint_config, load_checkpoint

    if args.checkpoint is not None:
        checkpoint_file(args.checkpoint)
    if args.config:
        cfg = config_from_args(args, overrides)
        if args.checkpoint is None and cfg.model_path is not None:
            checkpoint_file(cfg.model_path, "model_path")
        ckpt = Path(args.checkpoint or cfg.model_path or cfg.run_dir / "best_model.pt")
    elif args.checkpoint:
        ckpt = Path(args.checkpoint)
        stored = checkpoint_config(load_checkpoint(ckpt), ckpt)
        if stored.data_dir is not None and "data_dir" not in overrides:  # a file, not the user, picks the folder read
            log.warning("warning: reading data from %s, the data_dir stored in the checkpoint %r (not given by you); "
                        "pass `--data_dir DIR` to read another folder.", repr(stored.data_dir)[:200], str(ckpt))
        cfg = load_config(None, {**stored.to_dict(), **overrides})
    else:
        run = latest_run(overrides.get("out_root", "runs"))
        cfg = load_config(run / "config.yaml", overrides)
        ckpt = run / "best_model.pt"
    return cfg, ckpt, ckpt.parent


def eval_dir(run_dir: Path, ckpt: Path, kind: str, preset: str, spike_levels: int = 1) -> Path:
    """Where an evaluation of checkpoint ``ckpt`` writes by default: ``<its folder>/<kind>-<its
    name>-<preset>`` (``-m<spike_levels>`` appended when it is not 1), so that two checkpoints or
    settings in one folder never overwrite each other's results."""
    return run_dir / (f"{kind}-{ckpt.stem}-{preset}" + (f"-m{spike_levels}" if spike_levels != 1 else ""))


# --------------------------------------------------------------------------------------------
# the preamble
@dataclass
class Job:
    """What :func:`prepare` hands a command: the resolved config and checkpoint, the output folder
    (checked), the trained model with its test loader and simulator, and the command's step
    options parsed (``rows`` and ``extra_t`` of ``table`` / ``frontier``, ``spike_levels`` of
    ``frontier``; None where the command has no such option)."""

    cfg: Config
    checkpoint: Path
    out: Path
    model: Any  # torch.nn.Module
    loader: Any
    sim: Any  # ann2snn.Simulator
    rows: list[int] | None = None
    extra_t: list[int] | None = None
    spike_levels: list[int] | None = None
    tokens: int = 0  # a language model's tokens per sample (its context); 0 for images


def _step_options(args, L: int | None) -> dict[str, list[int]]:
    """The command's step specifications (:func:`ann2snn.app.config.parse_steps`): ``--t`` and
    ``--extra-t`` where they are row lists (table, frontier), ``--spike-levels`` (frontier)."""
    out = {}
    if hasattr(args, "extra_t"):
        out["rows"] = parse_steps(args.t, "--t", 1, L)
        out["extra_t"] = parse_steps(args.extra_t, "--extra-t", 0, L)
    if hasattr(args, "spike_levels"):
        out["spike_levels"] = parse_steps(args.spike_levels, "spike levels", 1, L, "Use e.g. `--spike-levels 1,2,L`.")
    return out


def prepare(args, overrides: dict[str, Any], kind: str, per_level: bool = True, converted_only: bool = False) -> Job:
    """The preamble of every evaluating command: resolve the config and checkpoint, parse the step
    options (``L`` stands for the model's QCFS levels), pick the output folder (``--out``, else
    :func:`eval_dir` of ``kind``, suffixed by spike_levels when ``per_level``), check every output
    path before any work (a bad one loses no evaluation), then load the trained model and its test
    data and build its simulator.  ``converted_only``: refuse a directly trained SNN up front."""
    from ann2snn.app.pipeline import load_trained, simulator_for
    from ann2snn.models import model_kind

    cfg, ckpt, run_dir = resolve(args, overrides)
    converted = model_kind(cfg.model) == "convertible"
    if converted_only and not converted:
        raise ConfigError(f"`ann2snn {args.command}` compares spike levels of a converted network; {cfg.model} is a "
                          "directly trained SNN, whose neurons send one spike per step. Use `convert` or `table`.")
    steps = _step_options(args, cfg.l if converted else None)
    level = cfg.spike_levels if per_level else 1
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, kind, cfg.preset, level)
    preflight_outputs(args, out)
    model, loader, info = load_trained(cfg, ckpt)
    return Job(cfg, ckpt, out, model, loader, simulator_for(model, cfg, info), tokens=info.context, **steps)


def self_check(model, sim, loader, cfg):
    """``verify`` on the first test batch under the exact preset (a converted model only): the
    largest |SNN − quantized ANN| once the network is quiescent (a
    :class:`~ann2snn.results.VerifyResult`).  Warns when it exceeds the tolerance; None for
    direct SNNs and the other presets, which approximate by design."""
    from ann2snn.app.report import verify_line
    from ann2snn.models import model_kind
    from ann2snn.presets import get_preset
    from ann2snn.verify import verify

    if model_kind(cfg.model) != "convertible" or not get_preset(cfg.preset).exact:
        return None
    x, _ = next(iter(loader))
    res = verify(model, sim, x)
    if not res.ok:
        log.warning("verify: the converted network does NOT settle on the quantized ANN: %s. The conversion "
                    "is wrong for this model; please report it.", verify_line(res))
    return res


def _is_main() -> bool:
    """False on torchrun ranks other than 0 (they compute but do not print or write)."""
    from ann2snn.app import distributed

    return distributed.is_main()


# --------------------------------------------------------------------------------------------
# the commands
def cmd_train(args, overrides) -> int:
    from ann2snn.app.train import train

    cfg = config_from_args(args, overrides)
    run_dir = Path(args.out) if args.out else cfg.run_dir
    preflight_outputs(args, run_dir, extra_dirs=((Path(cfg.out_root), "out_root"),))  # before any work
    res = train(cfg, out=args.out, resume=args.resume, extend=getattr(args, "extend", False))  # `run`: no --extend
    if _is_main():
        print(f"best test top-1 {res['best_top1']:.2f}%  ->  {res['run_dir']}")
    return 0


def cmd_convert(args, overrides) -> int:
    from ann2snn.app.plots import write_convert_plots
    from ann2snn.app.report import (convert_result, format_energy_table, format_steps, per_token, summary_line,
                                    verify_line, write_json)
    from ann2snn.energy import EnergyMeter, energy_of
    from ann2snn.metrics import evaluate

    job = prepare(args, overrides, "eval")
    cfg, ckpt, out, model, loader, sim = job.cfg, job.checkpoint, job.out, job.model, job.loader, job.sim
    check = self_check(model, sim, loader, cfg)
    latency_extra = getattr(args, "latency_extra", 0)  # `run` has no --latency-extra
    with EnergyMeter.for_simulator(sim) as meter:  # firing rates and operations of the t-step run
        res = evaluate(sim, loader, cfg.t, cfg.extra_t, ann=model, meter=meter, latency_extra=latency_extra)
    result = convert_result(res, cfg.t, cfg.extra_t, cfg.preset, ckpt, check, tokens=job.tokens)
    if not _is_main():  # under torchrun only rank 0 reports and writes
        return 0
    energy = energy_of(meter, sim, next(iter(loader))[0], cfg.t, cfg.extra_t, getattr(args, "constants", "fp32"),
                       getattr(args, "first_layer", "once"), effective_latency=res.effective_latency,
                       hardware=hardware_model(args))  # (rank 0's shard under torchrun)
    full = getattr(args, "energy", False)  # `run` has no --energy
    result.update({"energy": energy.to_dict()} if full else {"energy_totals": energy.totals.to_dict()})
    if job.tokens:
        result["energy_per_token"] = per_token(energy, job.tokens)
    print(format_steps(result))
    if check is not None and getattr(args, "verify", False):
        print(verify_line(check))
    print(format_energy_table(energy) if full else summary_line(energy, job.tokens))
    write_json(out / f"convert_t{cfg.t}_e{cfg.extra_t}.json", result)
    write_convert_plots(result, energy, out)
    if args.json:
        write_json(Path(args.json), result)
    print(f"written: {out}")
    return 0


def hardware_model(args):
    """The second (memory) energy model of the command's ``--weight-bits`` / ``--weight-reads``."""
    from ann2snn.energy import HardwareModel

    return HardwareModel(weight_bits=getattr(args, "weight_bits", 8), weight_reads=getattr(args, "weight_reads", "best"))


def cmd_energy(args, overrides) -> int:
    from ann2snn.app.plots import write_energy_plots
    from ann2snn.app.report import format_energy_table, per_token, write_energy_csv, write_energy_json
    from ann2snn.energy import measure_energy

    job = prepare(args, overrides, "energy")
    cfg, ckpt, out, model, loader = job.cfg, job.checkpoint, job.out, job.model, job.loader
    res = measure_energy(model, job.sim, loader, cfg.t, cfg.extra_t, args.constants,
                         args.max_batches, args.first_layer, latency_extra=args.latency_extra,
                         hardware=hardware_model(args))
    if not _is_main():
        return 0
    meta = {"checkpoint": str(ckpt), "preset": cfg.preset}  # written after the result's own keys
    print(format_energy_table(res))
    if job.tokens:  # a language model: the figures per token too
        meta["energy_per_token"] = tok = per_token(res, job.tokens)
        print(f"per token ({job.tokens} per sample): ANN {tok['e_ann_mj'] * 1e3:.4g} µJ, SNN {tok['e_snn_mj'] * 1e3:.4g} µJ"
              + (f"; memory model: QNN {tok['e_qnn_mj'] * 1e3:.4g} µJ, SNN {tok['e_snn_memory_mj'] * 1e3:.4g} µJ"
                 if "e_qnn_mj" in tok else ""))
    write_energy_json(out / f"energy_t{cfg.t}_e{cfg.extra_t}.json", res, meta)
    write_energy_csv(out / f"energy_t{cfg.t}_e{cfg.extra_t}.csv", res)
    write_energy_plots(res, out)
    if args.json:
        write_energy_json(args.json, res, meta)
    if args.csv:
        write_energy_csv(args.csv, res)
    print(f"written: {out}")
    return 0


def cmd_table(args, overrides) -> int:
    from ann2snn.app.plots import NAMES, plot_table_heatmap
    from ann2snn.app.report import write_table
    from ann2snn.metrics import evaluate_ann, evaluate_table

    job = prepare(args, overrides, "table")
    t0 = time.perf_counter()
    ann = evaluate_ann(job.model, job.loader)
    t1 = time.perf_counter()
    table = evaluate_table(job.sim, job.loader, job.rows, max(job.extra_t))
    t2 = time.perf_counter()
    timing = {"ann_eval_s": round(t1 - t0, 3), "table_s": round(t2 - t1, 3),
              "table_over_ann_eval": round((t2 - t1) / max(t1 - t0, 1e-9), 2)}
    if _is_main():  # under torchrun only rank 0 writes
        write_table(job.out, ann, table, job.extra_t, meta={"checkpoint": str(job.checkpoint), "preset": job.cfg.preset,
                                                            "n": ann.n, "spike_levels": job.cfg.spike_levels,
                                                            "timing": timing, "tokens_per_sample": job.tokens})
        print(f"time: ANN evaluation {timing['ann_eval_s']:.2f} s, table {timing['table_s']:.2f} s "
              f"({timing['table_over_ann_eval']:.1f}x the ANN evaluation, same data, one run)")
        print(f"heatmap: {plot_table_heatmap(ann, table, job.extra_t, job.out / NAMES['heatmap'])}")
    return 0


def cmd_frontier(args, overrides) -> int:
    from ann2snn.app.plots import NAMES, plot_frontier
    from ann2snn.app.report import write_frontier
    from ann2snn.frontier import frontier

    job = prepare(args, overrides, "frontier", per_level=False, converted_only=True)
    res = frontier(job.model, job.sim, job.loader, job.spike_levels, job.rows, max(job.extra_t), args.energy_batches,
                   args.constants, args.first_layer, hardware=hardware_model(args), by="loss" if job.tokens else "top1")
    if not _is_main():
        return 0
    write_frontier(job.out, res, meta={"checkpoint": str(job.checkpoint), "preset": job.cfg.preset,
                                       **({"tokens_per_sample": job.tokens} if job.tokens else {})})
    print(f"plot: {plot_frontier(res, job.out / NAMES['frontier'])}")
    return 0


def _prompts(args, job) -> list:
    """The prompts of ``generate`` as (their places in the order given, token ids [B, n]), grouped
    by length (each group one batch): every ``--prompt`` text (UTF-8 bytes), then with
    ``--test-prompts K`` the first half-window of each of the first K test windows."""
    import torch

    from ann2snn.app.text import encode

    prompts = [encode(p).long() for p in (args.prompt or [])]
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("--prompt is empty; pass some text, e.g. `--prompt 'The '`.")
    if args.test_prompts:
        ds, n = job.loader.dataset, job.tokens // 2
        if args.test_prompts > len(ds):
            raise ConfigError(f"--test-prompts {args.test_prompts} is more than the {len(ds)} test windows; use at most "
                              f"{len(ds)}.")
        prompts += [ds[i][0][:n] for i in range(args.test_prompts)]
    if not prompts:
        raise ConfigError("generate needs a prompt: `--prompt TEXT` (repeatable) or `--test-prompts K` (the start of "
                          "K test windows).")
    groups: dict[int, list] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append((i, p))
    return [([i for i, _ in g], torch.stack([p for _, p in g])) for g in groups.values()]


def cmd_generate(args, overrides) -> int:
    from ann2snn.app.report import generation_lines, generation_texts, write_json
    from ann2snn.generate import generate

    job = prepare(args, overrides, "generate", converted_only=True)
    if not job.tokens:
        raise ConfigError(f"`ann2snn generate` continues text with a language model; {job.cfg.model} on "
                          f"{job.cfg.data} is an image model. Train one with `ann2snn train -c configs/gpt_python_docs.yml`.")
    cfg = job.cfg
    groups = _prompts(args, job)
    results = [generate(job.model, job.sim, batch, args.max_new_tokens, cfg.t, cfg.extra_t, context=job.tokens)
               for _, batch in groups]
    if not _is_main():
        return 0
    order = [places for places, _ in groups]
    for line in generation_lines(results, order):
        print(line)
    doc = {"checkpoint": str(job.checkpoint), "preset": cfg.preset, "results": [r.to_dict() for r in results],
           "prompt_places": order, "texts": generation_texts(results, order),
           "identical": all(r.identical for r in results)}
    write_json(job.out / f"generate_t{cfg.t}_e{cfg.extra_t}.json", doc)
    if args.json:
        write_json(Path(args.json), doc)
    print(f"written: {job.out}")
    return 0


def cmd_run(args, overrides) -> int:
    """Run what an original-style config's ``action``/``mode`` keys ask for."""
    cfg = config_from_args(args, overrides)
    if cfg.action == "train":
        return cmd_train(args, overrides)
    preflight_outputs(args, None)  # --out / --json, before any work
    # --checkpoint on the command line wins over the config's model_path
    given = getattr(args, "checkpoint", None)
    if given is not None:
        checkpoint_file(given)
    elif cfg.model_path is not None:
        checkpoint_file(cfg.model_path, "model_path")
    args.checkpoint = given or cfg.model_path
    if args.checkpoint is None:
        raise ConfigError("action: test needs a checkpoint to evaluate: set model_path in the config "
                          "or pass --checkpoint PATH.")
    if cfg.mode == "ann":
        from ann2snn.app.pipeline import load_trained
        from ann2snn.metrics import evaluate_ann

        model, loader, _ = load_trained(cfg, Path(args.checkpoint))
        ann = evaluate_ann(model, loader)
        if _is_main():
            print(f"ANN top-1 {ann.top1:.2f}%  top-5 {ann.top5:.2f}%  loss {ann.loss:.4f}")
        return 0
    return cmd_convert(args, overrides)


__all__ = ["Job", "checkpoint_file", "cmd_convert", "cmd_energy", "cmd_frontier", "cmd_generate", "cmd_run", "cmd_table", "cmd_train",
           "config_from_args", "eval_dir", "latest_run", "prepare", "resolve", "self_check"]
