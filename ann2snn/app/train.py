"""Training: the original's recipe (AdamW, cosine per epoch, cross-entropy, AMP on CUDA); SGD with
momentum for QCFS's CNN recipe (config key ``optimizer``).

Directly trained SNNs (registry kind ``direct``: spikformer, sdt) skip the QCFS pass, are built
with T = ``cfg.t`` and have their neurons reset after every batch.  Their papers' recipe adds
config keys that default to off: ``warmup_epochs`` (linear warmup, then cosine), ``label_smoothing``
and ``mixup`` (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

Writes a run directory: ``config.yaml`` (resolved), ``log.csv`` (one row per epoch), ``last.pt``
(everything needed to resume) and ``best_model.pt`` (best test top-1, as the original did —
CIFAR has no separate validation split in its recipe).  ``<out_root>/LATEST`` names the most
recent run that has a best checkpoint, which `convert`/`table` use by default.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

from ann2snn.app import distributed, rundir
from ann2snn.app.files import append_text, atomic_write_text
from ann2snn.app.checkpoint import (FORMAT_VERSION, CheckpointError, atomic_save, check_compatible,
                                checkpoint_config, load_checkpoint, load_state, rng_state)
from ann2snn.app.config import Config, ConfigError, resume_changes, resumed_config, save_config
from ann2snn.app.pipeline import build_model, load_pretrained
from ann2snn.metrics import evaluate_ann, per_target
from ann2snn.simulate import logits_of
from ann2snn.models import model_kind
from ann2snn.progress import progress
from ann2snn.quant import calibrate_lambdas
from ann2snn.results import Accuracy

log = logging.getLogger("ann2snn")
LOG_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "epoch_s"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class DivergedError(TrainingError):
    """The training or test loss, or the weights, became NaN/inf.  Nothing non-finite is saved; a
    run that had no checkpoint before this invocation is removed, whatever epoch it reached
    (:func:`ann2snn.app.rundir.cleanup_on_failure`)."""


DIVERGED_FIX = ("Lower the learning rate (e.g. `--lr 1e-3`), switch AMP off (`--use_amp false`), or warm the "
                "learning rate up (`--warmup_epochs 5`).")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999: the original transformer recipe) or SGD with momentum (QCFS's CNN
    recipe: momentum 0.9, weight decay 5e-4), both with weight decay ``wd`` on every parameter."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.wd, betas=(0.9, 0.999))


def build_scheduler(optimizer, cfg: Config):
    """Stepped once per epoch: cosine annealing to 0 (the original); with ``warmup_epochs`` = W > 0,
    epoch k ≤ W uses lr·k/(W+1) (a linear ramp below the base rate, as timm's warmup) and a cosine
    from the base rate runs over the remaining epochs."""
    if cfg.warmup_epochs <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    W, rest = cfg.warmup_epochs, max(cfg.epochs - cfg.warmup_epochs, 1)

    def factor(done: int) -> float:  # `done` epochs completed: the factor of epoch done + 1
        return (done + 1) / (W + 1) if done < W else 0.5 * (1 + math.cos(math.pi * (done - W) / rest))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """(λ·x + (1−λ)·x[perm], y[perm], λ) with λ ~ Beta(α, α) (mixup, Zhang et al., ICLR 2018)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def _train_one_epoch(model, loader, optimizer, scaler, device, use_amp, epoch, *, label_smoothing: float = 0.0,
                     mixup: float = 0.0, reset: bool = False) -> tuple[float, float]:
    model.train()
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in progress(loader, desc=f"epoch {epoch}"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        y_mix, lam = None, 1.0
        if mixup > 0:
            x, y_mix, lam = mixup_batch(x, y, mixup)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            out, y = per_target(logits_of(model(x)).unsqueeze(0), y)  # a language model: every token
            out = out[0]
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if y_mix is not None:
                loss = lam * loss + (1 - lam) * F.cross_entropy(out, y_mix, label_smoothing=label_smoothing)
        if not distributed.all_finite(loss):  # agreed by all ranks, so they stop together
            value = float(loss.detach())
            what = value if not math.isfinite(value) else "non-finite on another process"
            raise DivergedError(f"The training loss became {what} in epoch {epoch}. {DIVERGED_FIX}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if reset:  # direct SNNs: no neuron state (nor its graph) is carried into the next batch
            functional.reset_net(model)
        b = y.shape[0]
        total += b
        loss_sum += float(loss.detach()) * b
        correct += int((out.argmax(-1) == y).sum())
    total, loss_sum, correct = distributed.all_reduce_sum(total, loss_sum, correct)  # over ranks
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


def _unique_run_dir(path: Path) -> Path:
    if not (path / "last.pt").exists() and not (path / "best_model.pt").exists():
        return path
    i = 2
    while (path.parent / f"{path.name}-{i}").exists():
        i += 1
    new = path.parent / f"{path.name}-{i}"
    log.info("run directory %s is taken; writing to %s (use --resume to continue the old run)", path, new)
    return new


def _non_finite(tr_loss: float, ev: Accuracy, model: nn.Module, epoch: int) -> str | None:
    """What became non-finite in ``epoch`` (the epoch's mean training loss, the test loss, a
    weight or buffer), or None.  The same on every rank: the losses are reduced over ranks and
    the weights are kept equal (DDP, :func:`ann2snn.app.distributed.sync_buffers`)."""
    if not math.isfinite(tr_loss):
        return f"The training loss became {tr_loss} in epoch {epoch}."
    if not math.isfinite(ev.loss):
        return f"The test loss became {ev.loss} after epoch {epoch} (the model's outputs are not finite)."
    params = {id(p) for p in model.parameters()}
    for name, t in model.state_dict(keep_vars=True).items():
        if not t.is_floating_point():
            continue
        # a weight must stay finite; a buffer may hold ±inf by design (a causal mask's −inf), never NaN
        bad = ~torch.isfinite(t) if id(t) in params else torch.isnan(t)
        if bool(bad.any()):
            return f"The model's {name} became non-finite in epoch {epoch}."
    return None


def _after_divergence(run_dir: Path, kept: bool, epoch: int) -> str:
    """What happens to the run after it diverged in ``epoch`` (see :func:`rundir.cleanup_on_failure`)."""
    if not kept:
        return (f"Nothing of this run is kept for `convert`: its checkpoints in {str(run_dir)!r} are removed "
                "and LATEST is put back as it was before this run.")
    return (f"The checkpoints in {str(run_dir)!r} are kept (nothing of epoch {epoch} was saved, and nothing "
            "non-finite ever is), but `--resume` would repeat the same steps (the learning rate comes from "
            "last.pt): start a new run with other settings, or one from these weights with "
            f"`--inherit true --model_path {run_dir / 'best_model.pt'} --lr 1e-3` (without --resume).")


def _write_failed(err: OSError, step: str, run_dir: Path, epoch: int, best_before: int) -> TrainingError:
    """The error for a write of ``epoch``'s results that failed (a full disk, mostly): what could
    not be written, exactly which files of which epoch are kept, and how to go on.  ``step``: the
    write that failed ("log.csv", "last.pt", "best_model.pt" or "LATEST", in the order
    :func:`_write_epoch` writes them); ``best_before``: the epoch of the best_model.pt kept from
    before this epoch (0: none, or not known for a checkpoint of an older ann2snn).  The
    half-written file is gone already (every write is atomic: :mod:`ann2snn.app.files`)."""
    name = getattr(err, "filename", None) or (run_dir / step)
    why = err.strerror or str(err)
    fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
    head = f"could not write {name} in epoch {epoch}: {why}."
    resume = "`--resume` (the same command with --resume)"
    if step == "best_model.pt":
        was = f"is still epoch {best_before}'s" if best_before else "was not written yet"
        return TrainingError(f"{head} In {str(run_dir)!r}, last.pt of epoch {epoch} is kept (it holds the weights "
                             f"of this best epoch); best_model.pt {was} and LATEST was not updated. {fix.capitalize()} "
                             f"and {resume}: it first writes best_model.pt of epoch {epoch} from last.pt.")
    if step == "LATEST":
        return TrainingError(f"{head} last.pt and best_model.pt of epoch {epoch} in {str(run_dir)!r} are kept, but "
                             f"LATEST does not name this run yet; {fix} and {resume}, which updates it, or pass "
                             f"`--checkpoint {run_dir / 'best_model.pt'}` to convert.")
    if (run_dir / "last.pt").is_file():  # log.csv or last.pt failed: the previous epoch's files are intact
        best = f"; best_model.pt is epoch {best_before}'s" if best_before else ""
        return TrainingError(f"{head} The checkpoints of epoch {epoch - 1} in {str(run_dir)!r} are kept (last.pt of "
                             f"epoch {epoch - 1}{best}); {fix} and {resume}.")
    return TrainingError(f"{head} The run had no checkpoint yet, so nothing of it is kept; {fix} and run the same "
                         "command again.")


def _csv_line(row: list) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerow(row)
    return buf.getvalue()


# what best_model.pt holds: the model-only part of last.pt (so --resume can rewrite it from last.pt)
BEST_KEYS = ("format", "config", "model", "epoch", "metrics", "world_size", "extended")


def _write_epoch(cfg: Config, run_dir: Path, epoch: int, row: list, meta: dict, best_before: int, best: float,
                 rng: dict, model: nn.Module, ev: Accuracy, optimizer, scheduler, scaler, world_size: int) -> None:
    """Append ``epoch``'s log row, then write its checkpoints in this order: last.pt, then, if the
    epoch improved (``meta["best_epoch"] == epoch``), best_model.pt and LATEST.  Every write is atomic, so
    a failure (a full disk) or a kill at any point leaves whole files, and never a best_model.pt or
    LATEST newer than last.pt: the files of the epoch before, or last.pt of this epoch (whose
    ``best_epoch`` tells ``--resume`` to write the rest from it, :func:`_finish_interrupted_writes`).
    A failed write is a TrainingError saying what is kept (:func:`_write_failed`).  ``meta``:
    ``best_epoch`` (last.pt) and ``extended`` (both checkpoints, when the run was ever extended)."""
    log_path = run_dir / "log.csv"
    if cfg.save_acc:
        try:
            append_text(log_path, _csv_line(row))  # never through a link; a partial row is dropped by --resume
        except OSError as err:
            raise _write_failed(err, "log.csv", run_dir, epoch, best_before) from None
    if not cfg.save:
        return
    state = {"format": FORMAT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(), "epoch": epoch,
             "metrics": {k: float(v) for k, v in ev.to_dict().items()}, "world_size": world_size,
             **({"extended": meta["extended"]} if meta["extended"] else {})}
    best_epoch = meta["best_epoch"]
    last = {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "best": best, "best_epoch": best_epoch, **rng}
    steps = [("last.pt", lambda: atomic_save(last, run_dir / "last.pt"))]
    if best_epoch == epoch:
        steps += [("best_model.pt", lambda: atomic_save(state, run_dir / "best_model.pt")),
                  ("LATEST", lambda: rundir.write_latest(run_dir, cfg.out_root))]
    for step, write in steps:
        try:
            write()
        except OSError as err:
            raise _write_failed(err, step, run_dir, epoch, best_before) from None


def _start_files(cfg: Config, run_dir: Path, start: int, resumed: dict | None) -> None:
    """Rank 0, once every check has passed: claim ``run_dir`` (removed again if the run fails
    early), write config.yaml and log.csv's header (or drop the rows logged after last.pt), and
    complete the writes last.pt's epoch left undone (``resumed``: the last.pt resumed from)."""
    log_path = run_dir / "log.csv"
    rundir.claim(run_dir, Path(cfg.out_root))
    save_config(cfg, run_dir / "config.yaml")
    if not start or not log_path.exists():
        atomic_write_text(log_path, _csv_line(LOG_FIELDS))
    else:
        rundir.truncate_log(log_path, start)  # rows a killed run logged after its last.pt
    if resumed is not None:  # best_model.pt / LATEST of last.pt's epoch, if their write was lost
        _finish_interrupted_writes(resumed, run_dir, Path(cfg.out_root))


def _saved_epoch(path: Path) -> int | None:
    """The ``epoch`` of the checkpoint at ``path``, or None (missing, unreadable).  Memory-mapped:
    only the small values are read, not the weights."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # missing, truncated, foreign: in any case not the epoch wanted
        return None


def _latest_is_stale(run_dir: Path, out_root: Path) -> bool:
    """True when ``<out_root>/LATEST`` should name ``run_dir`` but does not: it is missing or
    corrupt, names a run without a best_model.pt, or one whose best_model.pt is older than this
    run's last.pt (the LATEST write of that epoch was lost; a run trained since keeps LATEST)."""
    try:
        named = rundir.read_latest(out_root)
    except ConfigError:
        return True
    if named is None:
        return True
    try:
        if named.resolve() == run_dir.resolve():
            return False
        return (named / "best_model.pt").stat().st_mtime_ns < (run_dir / "last.pt").stat().st_mtime_ns
    except (OSError, RuntimeError):  # a missing run (or a link loop: RuntimeError before Python 3.13)
        return True


def _finish_interrupted_writes(ckpt: dict, run_dir: Path, out_root: Path) -> None:
    """Complete what the last epoch of a resumed run left unwritten (a full disk, or a kill after
    last.pt, :func:`_write_epoch`): when last.pt's epoch was the run's best, best_model.pt is
    written from it (the same weights) unless it already is that epoch's, then LATEST is made to
    name the run if it is stale (:func:`_latest_is_stale`).  A last.pt of an older ann2snn has no
    ``best_epoch``: nothing to do."""
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or ckpt.get("best_epoch") != epoch:
        return
    best_path = run_dir / "best_model.pt"
    if _saved_epoch(best_path) != epoch:
        atomic_save({k: ckpt[k] for k in BEST_KEYS if k in ckpt}, best_path)
        log.warning("wrote %s of epoch %d from last.pt (its write had not completed)", best_path, epoch)
    if _latest_is_stale(run_dir, out_root):
        rundir.write_latest(run_dir, out_root)
        log.warning("%s names %s again (its update in epoch %d had not completed)", Path(out_root) / rundir.LATEST,
                    run_dir, epoch)


def _extend_schedule(scheduler, optimizer, epochs: int) -> list[float]:
    """Rebuild the per-epoch schedule of a run lengthened to ``epochs`` (``--extend``) at its resume
    point, after ``scheduler.last_epoch`` epochs: the cosine now ends at the new last epoch, and the
    next epoch's learning rate is the new schedule's closed-form value there.  (PyTorch's cosine
    steps multiplicatively from the current rate, so keeping that rate -- 0 at the end of a
    finished run -- would keep it at 0.)  The warmup form (LambdaLR) was built for ``epochs``
    already; its rate is recomputed the same way.  Returns the new rates."""
    done = scheduler.last_epoch
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        scheduler.T_max = max(epochs, 1)
        factor = 0.5 * (1 + math.cos(math.pi * done / scheduler.T_max))
        lrs = [scheduler.eta_min + (base - scheduler.eta_min) * factor for base in scheduler.base_lrs]
    else:
        lrs = [base * lam(done) for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)  # what get_last_lr() reports
    return lrs


def train(cfg: Config, out: str | None = None, resume: bool = False, extend: bool = False) -> dict:
    """Train ``cfg``; returns {"run_dir", "best_top1", "epochs"}.  Under torchrun: DDP (see
    ann2snn.app.distributed).  A run that fails before its first checkpoint is removed again, and
    so is a new run whose loss becomes non-finite at any epoch (DivergedError).  The run folder
    is locked for the whole training, its cleanup included (:func:`ann2snn.app.rundir.locked`).
    ``extend`` (with ``resume``): lengthen the run to ``cfg.epochs`` (larger than its own)."""
    if extend and not resume:
        raise ConfigError("--extend lengthens an existing run, so it needs --resume: `ann2snn train -c CONFIG "
                          "--out RUN_DIR --resume --extend --epochs N`. Drop --extend to start a new run.")
    with contextlib.ExitStack() as held:  # the run folder's lock: released after the cleanup below
        with rundir.cleanup_on_failure(discard_on=(DivergedError,)):
            return _train(cfg, out, resume, held, extend)


def _restore(ckpt: dict, cfg: Config, run_dir: Path, model, optimizer, scheduler, scaler, ctx,
             extend: bool) -> tuple[Config, int, float, dict]:
    """Load last.pt (``ckpt``) of ``run_dir`` into the model, optimiser, scheduler, scaler and RNGs
    for ``--resume``, after refusing changed run-defining keys (``extend``: a larger ``epochs`` is
    allowed, and the schedule is rebuilt for it, :func:`_extend_schedule`).  Returns (the config
    that runs, the epoch to continue after, the best top-1, the plain values the checkpoints carry
    on: ``best_epoch`` and ``extended``)."""
    ckpt_path = run_dir / "last.pt"
    stored = checkpoint_config(ckpt, ckpt_path)
    if extend and cfg.epochs <= stored.epochs:
        raise ConfigError(f"--extend needs a larger --epochs than the run's {stored.epochs} (got {cfg.epochs}): it "
                          f"only lengthens a run. Pass e.g. `--epochs {stored.epochs * 2}` with --resume --extend.")
    changed = resume_changes(stored, cfg, direct=model_kind(cfg.model) == "direct", extend=extend)
    if changed:
        longer = cfg.epochs > stored.epochs and not extend
        raise ConfigError(
            f"--resume of {str(run_dir)!r} with changed settings: {'; '.join(changed)}. These keys define "
            "the run (last.pt's optimiser, schedule and weights were made with the stored values), so a "
            f"resume cannot change them. Resume with the run's own settings (`-c {run_dir / 'config.yaml'}` "
            "--resume), or start a new run (another --out/--id) to use the new values"
            + (" (to lengthen the run, add --extend: `--resume --extend --epochs N`)." if longer else "."))
    cfg = resumed_config(stored, cfg)  # what runs (and goes into config.yaml)
    check_compatible(stored, cfg, ckpt_path)
    load_state(model, ckpt["model"], ckpt_path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start, best = int(ckpt["epoch"]), float(ckpt["best"])
        distributed.restore_rng(ckpt, cfg.seed, ctx)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{str(ckpt_path)!r} cannot be resumed from: its training state does not fit "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
                              "It is not a last.pt written by `ann2snn train` for this config. Start a new "
                              "run without --resume, or use `inherit: true` with `model_path:` to start from "
                              "its weights.") from None
    best_epoch = ckpt.get("best_epoch")
    extended = ckpt.get("extended")
    meta = {"best_epoch": best_epoch if isinstance(best_epoch, int) else 0,
            "extended": list(extended) if isinstance(extended, list) else []}
    if cfg.epochs > stored.epochs:  # --extend (refused above otherwise)
        lr = _extend_schedule(scheduler, optimizer, cfg.epochs)[0]
        meta["extended"].append({"after_epoch": start, "from_epochs": stored.epochs, "to_epochs": cfg.epochs})
        log.info("extending %s from %d to %d epochs: the schedule is rebuilt for %d epochs; epoch %d runs at lr "
                 "%.6g", run_dir, stored.epochs, cfg.epochs, cfg.epochs, start + 1, lr)
    log.info("resuming %s after epoch %d (best test top-1 %.2f%%)", run_dir, start, best)
    return cfg, start, best, meta


def _fresh_start(cfg: Config, model: nn.Module, train_loader) -> None:
    """The weights a run that resumes nothing starts from: ``model_path``'s (``inherit``), else a
    ReLU model's (``pretrained``); then, for a fresh QCFS run, λ calibrated from activation
    percentiles (``calibrate_batches``)."""
    if cfg.inherit:
        if not cfg.model_path:
            raise CheckpointError("inherit: true needs model_path: the checkpoint to start from.")
        ckpt = load_checkpoint(cfg.model_path)
        # a start from another dataset's weights is fine-tuning: no dataset warning
        check_compatible(checkpoint_config(ckpt, cfg.model_path), cfg, cfg.model_path, warn_data=False)
        load_state(model, ckpt["model"], cfg.model_path)
        if hasattr(model, "time_steps"):  # a direct SNN's T comes with its weights; train at cfg.t
            model.time_steps.fill_(cfg.t)
        return
    if cfg.pretrained and not cfg.model.startswith("hf:"):  # a fresh start from a ReLU model's weights
        load_pretrained(model, cfg.pretrained)  # (an hf: model was built from its checkpoint folder)
    if cfg.calibrate_batches > 0 and model_kind(cfg.model) == "convertible" and cfg.quantize:
        # a fresh QCFS run (typically from `pretrained` weights): λ from activation percentiles
        calibrate_lambdas(model, train_loader, cfg.calibrate_percentile, cfg.calibrate_batches)


def _train(cfg: Config, out: str | None, resume: bool, held: contextlib.ExitStack, extend: bool = False) -> dict:
    ctx = distributed.setup(cfg)  # joins the torchrun process group, if any
    device = ctx.device
    run_dir = Path(out) if out else cfg.run_dir
    if not resume:
        run_dir = distributed.on_rank0(lambda d=run_dir: _unique_run_dir(d))
    # Nothing is written before every check has passed: lock the folder (a second training of
    # it refuses), refuse files that are not a run's, then (below) a resume's config and log.
    distributed.on_rank0(lambda: held.enter_context(rundir.locked(run_dir)) and None)
    distributed.on_rank0(lambda: rundir.check_own_files(run_dir, LOG_FIELDS))
    seed_all(cfg.seed)
    train_loader, test_loader, info = distributed.build_loaders(cfg, ctx)
    model = build_model(cfg, info).to(device)
    distributed.seed_rank(cfg.seed, ctx)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    use_amp = cfg.use_amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    start, best, meta = 0, -1.0, {"best_epoch": 0, "extended": []}

    ckpt = resumed = distributed.on_rank0(lambda: rundir.resume_checkpoint(run_dir)) if resume else None
    # a run with checkpoints from before keeps them if it diverges now (a new run never has any)
    kept = resume and distributed.on_rank0(lambda: rundir.has_run_checkpoint(run_dir))
    if ckpt is not None:  # None: --resume of a run killed before its first checkpoint
        cfg, start, best, meta = _restore(ckpt, cfg, run_dir, model, optimizer, scheduler, scaler, ctx, extend)
    else:
        _fresh_start(cfg, model, train_loader)

    log_path = run_dir / "log.csv"
    if start:  # a resume appends to the log: refuse one that is not clean (a partial last line is)
        distributed.on_rank0(lambda: rundir.check_log(log_path, LOG_FIELDS))
    if ctx.is_main:  # only rank 0 writes
        _start_files(cfg, run_dir, start, resumed)
    net = distributed.wrap_model(model, cfg, ctx)  # DDP under torchrun; `model` itself otherwise
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %s (%.2f M parameters) on %s (%d train / %d test) for %d epochs on %s -> %s",
             cfg.model, n_params / 1e6, info.name, len(train_loader.dataset), len(test_loader.dataset),
             cfg.epochs, device, run_dir)

    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        distributed.set_epoch(train_loader, epoch)  # data order depends on (seed, epoch) only
        try:
            tr_loss, tr_top1 = _train_one_epoch(net, train_loader, optimizer, scaler, device, use_amp, epoch,
                                                label_smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                                                reset=model_kind(cfg.model) == "direct")
            scheduler.step()
            distributed.sync_buffers(model)  # every rank evaluates rank 0's model
            ev = evaluate_ann(model, test_loader, desc="test")
            bad = _non_finite(tr_loss, ev, model, epoch)  # checked before anything of the epoch is saved
            if not distributed.all_finite(torch.tensor(0.0 if bad is None else float("nan"))):
                bad = bad or f"The weights became non-finite on another process in epoch {epoch}."
                raise DivergedError(f"{bad} {DIVERGED_FIX}")
        except DivergedError as err:
            raise DivergedError(f"{err} {_after_divergence(run_dir, kept, epoch)}") from None
        dt = time.perf_counter() - t0
        row = [epoch, f"{lr:.6g}", f"{tr_loss:.4f}", f"{tr_top1:.2f}", f"{ev.loss:.4f}",
               f"{ev.top1:.2f}", f"{ev.top5:.2f}", f"{dt:.1f}"]
        log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%% (top-5 %.2f%%)  %.1f s", epoch,
                 cfg.epochs, tr_loss, tr_top1, ev.top1, ev.top5, dt)
        best_before = meta["best_epoch"]
        meta["best_epoch"] = epoch if ev.top1 > best else best_before
        best = max(best, ev.top1)
        rng = distributed.rng_payload(rng_state()) if cfg.save else {}  # every rank's RNG (a collective)
        # rank 0 writes; a failed write (a full disk) is raised on every rank, so none waits forever
        distributed.on_rank0(lambda: _write_epoch(cfg, run_dir, epoch, row, meta, best_before, best, rng, model, ev,
                                                  optimizer, scheduler, scaler if use_amp else None, ctx.world_size))
    if math.isinf(best):  # pragma: no cover - epochs == 0
        best = float("nan")
    return {"run_dir": str(run_dir), "best_top1": best, "epochs": cfg.epochs}
