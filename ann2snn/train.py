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

from ann2snn import distributed, preflight, rundir
from ann2snn.checkpoint import (FORMAT_VERSION, CheckpointError, atomic_save, check_compatible,
                                checkpoint_config, load_checkpoint, load_state, rng_state)
from ann2snn.config import Config, ConfigError, resume_changes, resumed_config, save_config
from ann2snn.data import DataInfo
from ann2snn.metrics import evaluate_ann
from ann2snn.models import create_model, model_kind
from ann2snn.progress import progress
from ann2snn.quant import calibrate_lambdas, quantize

log = logging.getLogger("ann2snn")
LOG_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "epoch_s"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class DivergedError(TrainingError):
    """The training or test loss, or the weights, became NaN/inf.  Nothing non-finite is saved; a
    run that had no checkpoint before this invocation is removed, whatever epoch it reached
    (:func:`ann2snn.rundir.cleanup_on_failure`)."""


DIVERGED_FIX = ("Lower the learning rate (e.g. `--lr 1e-3`), switch AMP off (`--use_amp false`), or warm the "
                "learning rate up (`--warmup_epochs 5`).")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    """The registered model, with QCFS activations when it is meant for conversion (and
    ``quantize`` is on), with its initial weights (``pretrained`` is loaded by training, see
    :func:`load_pretrained`).

    Before anything is allocated the model is described on the meta device, and one that cannot
    fit in memory (≈ 4× its parameters for training) or does not run on the data's input size is
    refused with a ConfigError (:mod:`ann2snn.preflight`)."""
    direct = {"T": cfg.t, "ssa_form": cfg.ssa_form} if model_kind(cfg.model) == "direct" else {}
    if cfg.width is not None:
        direct["width"] = cfg.width
    if cfg.model == "vit" or cfg.model.startswith("timm:"):
        direct["patch_size"] = cfg.patch_size
    if cfg.model == "vit":
        direct["placement"] = cfg.placement

    def build_at(img_size: int) -> nn.Module:
        return create_model(cfg.model, dim=cfg.dim, num_heads=cfg.num_heads, depth=cfg.depth,
                            mlp_ratio=cfg.mlp_ratio, in_channels=info.in_channels, img_size=img_size,
                            num_classes=info.num_classes, use_maxpool=cfg.use_maxpool, attn=cfg.attn, **direct)

    meta = preflight.meta_model(lambda: build_at(info.img_size))
    if meta is not None:
        preflight.check_memory(meta, cfg.model, distributed.select_device(cfg))
    model = preflight.built(lambda: build_at(info.img_size), cfg.model)
    if model_kind(cfg.model) == "convertible" and cfg.quantize:
        model = quantize(model, cfg.l, cfg.lambda_init)
    preflight.check_input(model, meta, cfg.model, info, build_at)
    return model


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load a local state dict of the ReLU model into ``model`` (ReLU or already quantized: the
    QCFS thresholds ``*.lam`` are the only weights it may lack).  The file is a plain state dict,
    ``{"state_dict": ...}``, or an ann2snn checkpoint of a ``quantize: false`` run.  No downloads
    (the field's pretrained → calibrate → QCFS fine-tune workflow)."""
    from ann2snn.checkpoint import read_state_dict
    from ann2snn.quant import QCFS

    state = dict(read_state_dict(path))
    lams = {f"{n}.lam" for n, m in model.named_modules() if isinstance(m, QCFS)}
    own = model.state_dict()
    for key in lams - set(state):
        state[key] = own[key]  # keeps lambda_init (or the calibration that follows)
    load_state(model, state, path)


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
            out = model(x)
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


def _non_finite(tr_loss: float, ev: dict, model: nn.Module, epoch: int) -> str | None:
    """What became non-finite in ``epoch`` (the epoch's mean training loss, the test loss, a
    weight or buffer), or None.  The same on every rank: the losses are reduced over ranks and
    the weights are kept equal (DDP, :func:`ann2snn.distributed.sync_buffers`)."""
    if not math.isfinite(tr_loss):
        return f"The training loss became {tr_loss} in epoch {epoch}."
    if not math.isfinite(ev["loss"]):
        return f"The test loss became {ev['loss']} after epoch {epoch} (the model's outputs are not finite)."
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
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


def _write_failed(err: OSError, what: Path, run_dir: Path, epoch: int) -> TrainingError:
    """The error for a write of ``epoch``'s results that failed (a full disk, mostly): what could
    not be written, and what is kept for `--resume`.  The half-written file is gone already
    (atomic_save removes its temporary file), so last.pt is still the one of the epoch before."""
    name = getattr(err, "filename", None) or what
    why = err.strerror or str(err)
    fix = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
    if (run_dir / "last.pt").is_file():
        return TrainingError(f"could not write {name} in epoch {epoch}: {why}. The checkpoints of epoch {epoch - 1} "
                             f"in {str(run_dir)!r} are kept; {fix} and `--resume` (the same command with --resume).")
    return TrainingError(f"could not write {name} in epoch {epoch}: {why}. The run had no checkpoint yet, so "
                         f"nothing of it is kept; {fix} and run the same command again.")


def _write_epoch(cfg: Config, run_dir: Path, epoch: int, row: list, improved: bool, best: float, rng: dict,
                 model: nn.Module, ev: dict, optimizer, scheduler, scaler, world_size: int) -> None:
    """Append ``epoch``'s log row, then write its checkpoints (best_model.pt and LATEST if it
    improved, then last.pt).  A failed write is a TrainingError saying what is kept
    (:func:`_write_failed`): every checkpoint write is atomic, so last.pt stays the previous epoch's."""
    log_path = run_dir / "log.csv"
    if cfg.save_acc:
        try:
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow(row)
        except OSError as err:  # a partial row is dropped by `--resume`
            raise _write_failed(err, log_path, run_dir, epoch) from None
    if not cfg.save:
        return
    state = {"format": FORMAT_VERSION, "config": cfg.to_dict(), "model": model.state_dict(), "epoch": epoch,
             "metrics": {k: float(v) for k, v in ev.items()}, "world_size": world_size}
    target = run_dir / "best_model.pt"
    try:
        if improved:
            atomic_save(state, target)
            target = Path(cfg.out_root) / rundir.LATEST
            rundir.write_latest(run_dir, cfg.out_root)
        target = run_dir / "last.pt"
        atomic_save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else {}, "best": best, **rng}, target)
    except OSError as err:
        raise _write_failed(err, target, run_dir, epoch) from None


def train(cfg: Config, out: str | None = None, resume: bool = False) -> dict:
    """Train ``cfg``; returns {"run_dir", "best_top1", "epochs"}.  Under torchrun: DDP (see
    ann2snn.distributed).  A run that fails before its first checkpoint is removed again, and
    so is a new run whose loss becomes non-finite at any epoch (DivergedError).  The run folder
    is locked for the whole training, its cleanup included (:func:`ann2snn.rundir.locked`)."""
    with contextlib.ExitStack() as held:  # the run folder's lock: released after the cleanup below
        with rundir.cleanup_on_failure(discard_on=(DivergedError,)):
            return _train(cfg, out, resume, held)


def _train(cfg: Config, out: str | None, resume: bool, held: contextlib.ExitStack) -> dict:
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
    start, best = 0, -1.0

    ckpt = distributed.on_rank0(lambda: rundir.resume_checkpoint(run_dir)) if resume else None
    # a run with checkpoints from before keeps them if it diverges now (a new run never has any)
    kept = resume and distributed.on_rank0(lambda: rundir.has_run_checkpoint(run_dir))
    if ckpt is not None:  # None: --resume of a run killed before its first checkpoint
        ckpt_path = run_dir / "last.pt"
        stored = checkpoint_config(ckpt, ckpt_path)
        changed = resume_changes(stored, cfg, direct=model_kind(cfg.model) == "direct")
        if changed:
            raise ConfigError(
                f"--resume of {str(run_dir)!r} with changed settings: {'; '.join(changed)}. These keys define "
                "the run (last.pt's optimiser, schedule and weights were made with the stored values), so a "
                f"resume cannot change them. Resume with the run's own settings (`-c {run_dir / 'config.yaml'}` "
                "--resume), or start a new run (another --out/--id) to use the new values.")
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
        log.info("resuming %s after epoch %d (best test top-1 %.2f%%)", run_dir, start, best)
    elif cfg.inherit:
        if not cfg.model_path:
            raise CheckpointError("inherit: true needs model_path: the checkpoint to start from.")
        ckpt = load_checkpoint(cfg.model_path)
        # a start from another dataset's weights is fine-tuning: no dataset warning
        check_compatible(checkpoint_config(ckpt, cfg.model_path), cfg, cfg.model_path, warn_data=False)
        load_state(model, ckpt["model"], cfg.model_path)
        if hasattr(model, "time_steps"):  # a direct SNN's T comes with its weights; train at cfg.t
            model.time_steps.fill_(cfg.t)
    if ckpt is None and cfg.pretrained and not cfg.inherit:  # a fresh start from a ReLU model's weights
        load_pretrained(model, cfg.pretrained)
    if ckpt is None and cfg.calibrate_batches > 0 and model_kind(cfg.model) == "convertible" and cfg.quantize:
        # a fresh QCFS run (typically from `pretrained` weights): λ from activation percentiles
        calibrate_lambdas(model, train_loader, cfg.calibrate_percentile, cfg.calibrate_batches)

    log_path = run_dir / "log.csv"
    if start:  # a resume appends to the log: refuse one that is not clean (a partial last line is)
        distributed.on_rank0(lambda: rundir.check_log(log_path, LOG_FIELDS))
    if ctx.is_main:  # only rank 0 writes
        rundir.claim(run_dir, Path(cfg.out_root))  # removed again if the run fails early
        save_config(cfg, run_dir / "config.yaml")
        if not start or not log_path.exists():
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)
        else:
            rundir.truncate_log(log_path, start)  # rows a killed run logged after its last.pt
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
        row = [epoch, f"{lr:.6g}", f"{tr_loss:.4f}", f"{tr_top1:.2f}", f"{ev['loss']:.4f}",
               f"{ev['top1']:.2f}", f"{ev['top5']:.2f}", f"{dt:.1f}"]
        log.info("epoch %d/%d  loss %.4f  train %.2f%%  test %.2f%% (top-5 %.2f%%)  %.1f s", epoch,
                 cfg.epochs, tr_loss, tr_top1, ev["top1"], ev["top5"], dt)
        improved = ev["top1"] > best
        best = max(best, ev["top1"])
        rng = distributed.rng_payload(rng_state()) if cfg.save else {}  # every rank's RNG (a collective)
        # rank 0 writes; a failed write (a full disk) is raised on every rank, so none waits forever
        distributed.on_rank0(lambda: _write_epoch(cfg, run_dir, epoch, row, improved, best, rng, model, ev,
                                                  optimizer, scheduler, scaler if use_amp else None,
                                                  ctx.world_size))
    if math.isinf(best):  # pragma: no cover - epochs == 0
        best = float("nan")
    return {"run_dir": str(run_dir), "best_top1": best, "epochs": cfg.epochs}
