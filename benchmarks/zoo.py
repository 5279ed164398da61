"""The zoos as a benchmark: every torchvision classifier and the smallest model of every timm family
through the public API, as a new user would try them, one model per subprocess.

What is swept:

- torchvision: every classification model, ``torchvision.models.list_models(module=torchvision.models)``.
- timm: one model per family, a family being the timm module that registers the model
  (``timm.list_modules()``, ``timm.list_models(module=...)``). Its smallest model is found by counting
  parameters on the ``meta`` device over a bounded number of candidates (``--candidates``): half
  chosen by size words in the name (atto, femto, pico, nano, tiny, xxs, xs, small, …), half the
  first names in natural order (resnet10t before resnet18).
- Models over ``--max-params`` (400 M) parameters are not built: outcome ``too_big``.

Each model, in its own subprocess (``--one TASK``, one JSON line; ``--timeout`` seconds each, so a
hang cannot stop the sweep): built with random weights (``torch.manual_seed(0)``, no pretrained
weights, ``--classes`` outputs), every BatchNorm given non-trivial running statistics and affine
parameters, every all-zero weight matrix (torchvision's ViT head) given random values, eval mode; the input is the smallest of ``--sizes`` (32, 64, 96, 128, 160, 224) at
which the float model runs (timm models get ``img_size``, torchvision ViT / MaxViT
``image_size`` / ``input_size``, where the constructor takes it); a batch of 2 N(0, 1) images.
Then ``q = ann2snn.quantize(model, 4, example_input=x[:1])`` (default placement: a site at every ReLU and after every
other activation); unless ``--no-calibrate``, λ is set by ``ann2snn.quant.calibrate_lambdas`` on
a separate random batch of 4 (the 99.9th percentile, as ``quantize(calibrate=...)`` does), so
that the sites fire and the check is not vacuous; ``snn = ann2snn.convert(q)``;
``ann2snn.verify(q, snn, x)`` (float64, default tolerance 1e-4 · max(1, |logit|)).

Outcomes: ``exact`` (verify ok), ``wrong`` (converted, verify not ok), ``refused`` (a
ConversionError from quantize or convert; ``operator`` is the node's target, ``error`` the
message's first line), ``no_site`` (quantize found no activation to quantize), ``untraceable``
(the ConversionError says torch.fx cannot trace), ``crash`` (any other exception, or no input
size worked; ``error`` is its type and first line, ``stage`` where), ``timeout``, ``too_big``.
Recorded with it: the number of QCFS sites (``sites``) and of those that fire on the batch
(``active_sites``), ``max_abs_diff`` and the logit ``scale``, ``settle_steps``, the input size,
the parameter count and the seconds to build, quantize, calibrate, convert and verify.

SpikingJelly 2.0 on the same model before quantization (the ReLU ANN), input and calibration
batch: ``FXConverter(RateCodingRecipe([calibration batch], mode="Max")).convert(ann)``, then
T = 64 single steps of the same batch from reset, output averaged over the steps. Its outcome:
``refused`` (convert raised), ``no_neuron`` (converted but no spiking neuron was put in: no
``nn.ReLU`` module on the path), ``crash`` (the converted model failed to run), ``reproduces``
(the argmax of the T-step mean equals the ANN's on every sample of the batch **and** the
relative error max |mean − ANN| / max |ANN| is at most 0.1), else ``differs``; both numbers are
recorded (``argmax_agree``, ``rel_err``).

    python benchmarks/zoo.py --out runs/zoo/zoo.jsonl --write           # the whole sweep
    python benchmarks/zoo.py --only tv --limit 3                        # the first 3 torchvision models
    python benchmarks/zoo.py --models tv:resnet18,timm:resnet10t,timm-family:convnext
    python benchmarks/zoo.py --one tv:resnet18                          # one model, one JSON line

Tasks are ``tv:NAME``, ``timm:NAME`` (that timm model) and ``timm-family:MODULE`` (the smallest
model of that family); a bare name in ``--models`` is looked up in that order. ``--out`` gets one
JSON line per model as it finishes; ``--resume`` skips the tasks already there, and the report
covers every selected task in the file. ``--write`` puts the table and the totals into
benchmarks/RESULTS.md between the "zoo" markers.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SIZES = (32, 64, 96, 128, 160, 224)
MAX_PARAMS = 400_000_000
SIZE_WORDS = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xxsmall", "xs", "xsmall", "mini", "small", "s",
              "lite0", "b0", "t", "mobile", "light")
OUTCOMES = ("exact", "wrong", "refused", "no_site", "untraceable", "crash", "timeout", "too_big")
SJ_OUTCOMES = ("reproduces", "differs", "no_neuron", "refused", "crash", "timeout")
SJ_STEPS = 64
SJ_REL_ERR = 0.1
LEVELS = 4


def first_line(err: BaseException | str, limit: int = 1000) -> str:
    """An exception as ``Type: first line of its message`` (a string: its first line), object
    addresses removed."""
    text = re.sub(r" at 0x[0-9a-f]+", "", str(err).strip())  # object addresses differ from run to run
    line = text.splitlines()[0] if text else ""
    if isinstance(err, BaseException):
        line = f"{type(err).__name__}: {line}".rstrip(": ")
    return line[:limit]


def where(err: BaseException) -> str:
    """Where ``err`` was raised (its innermost frame), for a crash's message."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


# --------------------------------------------------------------------------------------------
# the zoos
def import_tv():
    from ann2snn._compat import import_torchvision, silence_noise

    silence_noise()
    return import_torchvision()


def import_timm():
    import_tv()  # timm imports torchvision: repair the CPU-torch mismatch first
    import timm

    return timm


def torchvision_names() -> list[str]:
    tv = import_tv()
    return sorted(tv.models.list_models(module=tv.models))


def timm_families() -> list[str]:
    return sorted(import_timm().list_modules())


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def candidates(names: list[str], k: int) -> list[str]:
    """At most ``k`` of a family's model names: half by size words in the name, half by natural order."""
    def word_rank(name: str) -> tuple:
        parts = re.split(r"[_.\-]", name.lower())
        ranks = [i for i, w in enumerate(SIZE_WORDS) if w in parts or (len(w) > 2 and any(w in p for p in parts))]
        return (min(ranks) if ranks else len(SIZE_WORDS), len(name), name)

    by_word = sorted(names, key=word_rank)[: max(1, k // 2)]
    by_order = sorted(names, key=_natural)
    out = list(dict.fromkeys(by_word))
    for name in by_order:
        if len(out) >= k:
            break
        if name not in out:
            out.append(name)
    return out


def resolve(name: str, tv_names: list[str] | None = None) -> str:
    """A task id for a --models entry: ``tv:``, ``timm:`` or ``timm-family:`` as given, else looked up."""
    if name.startswith(("tv:", "timm:", "timm-family:")):
        return name
    if name in (tv_names if tv_names is not None else torchvision_names()):
        return f"tv:{name}"
    timm = import_timm()
    if timm.is_model(name):
        return f"timm:{name}"
    if name in timm.list_modules():
        return f"timm-family:{name}"
    raise SystemExit(f"zoo: {name!r} is neither a torchvision classifier, a timm model nor a timm family")


def tasks_for(args) -> list[str]:
    if args.models:
        return [resolve(n.strip()) for n in args.models.split(",") if n.strip()]
    tasks = []
    if args.only in (None, "tv"):
        tasks += [f"tv:{n}" for n in torchvision_names()][: args.limit]
    if args.only in (None, "timm"):
        tasks += [f"timm-family:{f}" for f in timm_families()][: args.limit]
    return tasks


# --------------------------------------------------------------------------------------------
# building one model (in the child)
def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def build(zoo: str, name: str, classes: int, size: int | None):
    """The model with random weights; ``size`` is passed as the constructor's image size where it
    takes one (timm ``img_size``; torchvision ``image_size`` / ``input_size``). Returns
    (model, whether the size was passed)."""
    if zoo == "timm":
        timm = import_timm()
        def make(**kw):
            return timm.create_model(name, pretrained=False, num_classes=classes, **kw)
        keys = ("img_size",)
    else:
        tv = import_tv()
        def make(**kw):
            return tv.models.get_model(name, weights=None, num_classes=classes, **kw)
        keys = ("image_size", "input_size")  # ViT: an int; MaxViT: (height, width)
    if size is not None:
        for key in keys:
            try:
                return make(**{key: (size, size) if key == "input_size" else size}), True
            except TypeError as err:
                if key not in str(err):
                    raise
    return make(), False


def meta_params(zoo: str, name: str, classes: int) -> int | None:
    import torch

    try:
        with torch.device("meta"):
            return count_params(build(zoo, name, classes, None)[0])
    except Exception:  # noqa: BLE001 - some constructors compute on their tensors: count later, on the CPU
        return None


def pick_timm(family: str, classes: int, k: int) -> tuple[str, int | None, list]:
    """The family's model with the fewest parameters among its candidates (meta device)."""
    names = import_timm().list_models(module=family)
    if not names:
        raise ValueError(f"timm family {family!r} registers no model")
    counted = [(n, meta_params("timm", n, classes)) for n in candidates(names, k)]
    known = [c for c in counted if c[1] is not None]
    best = min(known, key=lambda c: c[1]) if known else counted[0]
    return best[0], best[1], counted


class NoInputSize(RuntimeError):
    """The float model runs at none of the input sizes tried."""


def fit_input(zoo: str, name: str, classes: int, sizes) -> tuple:
    """(model in eval mode, input batch of 2, size): the smallest size at which the float model runs;
    a timm model's own input size (its pretrained config's) is tried last."""
    import torch

    if zoo == "timm":
        own = (import_timm().get_pretrained_cfg_value(name, "input_size") or (0,))[-1]
        sizes = [*sizes, own] if own and own not in sizes else sizes

    model, sized, last = None, True, None
    for size in sizes:
        try:
            if model is None or sized:
                torch.manual_seed(0)
                model, sized = build(zoo, name, classes, size)
                model.eval()
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(x)
            return model, x, size
        except Exception as err:  # noqa: BLE001 - too small for this model: try the next size
            last = err
            if model is not None and not sized:
                continue
            model = None
    raise NoInputSize(f"no input size in {list(sizes)} runs: {first_line(last)}{where(last)}") from last


def randomize_bn(model, seed: int = 0) -> int:
    """Non-trivial running statistics and affine parameters for every BatchNorm (also timm's fused
    and frozen ones: any module with running_mean and running_var); returns how many."""
    import torch

    g, n = torch.Generator().manual_seed(seed), 0
    with torch.no_grad():
        for m in model.modules():
            mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            if not (isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor)):
                continue
            c = mean.numel()
            mean.copy_((torch.rand(c, generator=g) - 0.5).view_as(mean))
            var.copy_((torch.rand(c, generator=g) * 1.5 + 0.5).view_as(var))
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(w, torch.Tensor) and w.numel() == c:
                w.copy_((torch.rand(c, generator=g) + 0.5).view_as(w))
            if isinstance(b, torch.Tensor) and b.numel() == c:
                b.copy_((torch.rand(c, generator=g) * 0.7 - 0.2).view_as(b))
            n += 1
    return n


def randomize_zero_weights(model, seed: int = 0) -> int:
    """Random weights (normal, std 0.02) in place of the all-zero weight matrices some zoos start
    from (torchvision's ViT head, zero-initialised residual branches): with them the logits are
    0 whatever the input and a verify of 0 against 0 would prove nothing.  Returns how many."""
    import torch

    g, n = torch.Generator().manual_seed(seed + 1), 0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.numel() and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# the checks (in the child)
def refusal_parts(line: str) -> dict:
    """The operator (the node's target) and the reason of a refusal's message."""
    m = re.search(r"node '[^']*' \((.+?)\)(?: in module '| at the top level)", line)
    why = re.search(r" exactly: (.+?)(?:\. |$)", line)
    return {"operator": m.group(1) if m else None, "reason": why.group(1) if why else None}


def classify_error(err: BaseException, stage: str) -> dict:
    """The outcome of an exception raised at ``stage`` (quantize, calibrate, convert, verify)."""
    from ann2snn.graph import ConversionError

    line = first_line(str(err))
    if not isinstance(err, ConversionError):
        return {"outcome": "crash", "error": first_line(err) + where(err), "stage": stage}
    if "cannot trace" in line:
        return {"outcome": "untraceable", "error": line, "stage": stage}
    if stage == "quantize" and ("no activation to quantize" in line or "no QCFS site was created" in line):
        return {"outcome": "no_site", "error": line, "stage": stage}
    return {"outcome": "refused", "error": line, "stage": stage, **refusal_parts(line)}


def active_sites(q, x) -> int:
    """How many QCFS sites output something non-zero on ``x`` (float32)."""
    import torch

    from ann2snn.quant import QCFS

    fired: dict[int, bool] = {}
    hooks = [m.register_forward_hook(lambda mod, a, out: fired.__setitem__(id(mod), fired.get(id(mod), False)
                                                                           or bool(out.detach().any())))
             for m in q.modules() if isinstance(m, QCFS)]
    try:
        with torch.no_grad():
            q(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(fired.values())


def ann2snn_check(model, x, calib, rec: dict, emit, calibrate: bool = True) -> None:
    """quantize → (calibrate) → convert → verify, filling ``rec`` (outcome, sites, times, verify)."""
    import ann2snn
    from ann2snn.quant import QCFS, calibrate_lambdas

    times = rec.setdefault("times", {})
    stage = "quantize"
    try:
        rec["stage"] = stage
        emit(rec)
        t0 = time.perf_counter()
        q = ann2snn.quantize(model, LEVELS, example_input=x[:1])  # shape branches trace with it
        times["quantize_s"] = time.perf_counter() - t0
        rec["sites"] = sum(isinstance(m, QCFS) for m in q.modules())
        if calibrate:
            rec["stage"] = stage = "calibrate"
            t0 = time.perf_counter()
            calibrate_lambdas(q, [calib], batches=1)
            times["calibrate_s"] = time.perf_counter() - t0
        rec["active_sites"] = active_sites(q, x)
        rec["stage"] = stage = "convert"
        emit(rec)
        t0 = time.perf_counter()
        snn = ann2snn.convert(q)
        times["convert_s"] = time.perf_counter() - t0
        rec["stage"] = stage = "verify"
        emit(rec)
        t0 = time.perf_counter()
        r = ann2snn.verify(q, snn, x)
        times["verify_s"] = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - every failure is an outcome of the sweep
        rec.update(classify_error(err, stage))
        return
    rec.update(outcome="exact" if r.ok else "wrong", max_abs_diff=r.max_abs_diff, scale=r.scale,
               settle_steps=r.settle_steps, quiescent=r.quiescent, t=r.t, steps_run=r.steps_run, leaf=r.leaf)
    rec["stage"] = "done"


def spikingjelly_check(model, x, calib, steps: int = SJ_STEPS) -> dict:
    """SpikingJelly's FXConverter with RateCodingRecipe ('Max') on the ReLU ANN: see the docstring."""
    import torch
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import FXConverter, RateCodingRecipe
    from spikingjelly.activation_based.neuron import BaseNode

    from ann2snn.simulate import logits_of

    out: dict = {}
    with torch.no_grad():
        ann = logits_of(model(x)).double()
        t0 = time.perf_counter()
        try:
            snn = FXConverter(RateCodingRecipe([calib], mode="Max")).convert(model).eval()
        except Exception as err:  # noqa: BLE001
            return {"outcome": "refused", "error": first_line(err), "convert_s": time.perf_counter() - t0}
        out["convert_s"] = time.perf_counter() - t0
        out["neurons"] = sum(isinstance(m, BaseNode) for m in snn.modules())
        if not out["neurons"]:
            return {**out, "outcome": "no_neuron"}
        t0 = time.perf_counter()
        try:
            functional.reset_net(snn)
            acc = sum(logits_of(snn(x)).double() for _ in range(steps)) / steps
            functional.reset_net(snn)
        except Exception as err:  # noqa: BLE001
            return {**out, "outcome": "crash", "error": first_line(err) + where(err)}
        out["run_s"] = time.perf_counter() - t0
    agree = float((acc.argmax(-1) == ann.argmax(-1)).double().mean())
    rel = float((acc - ann).abs().max() / ann.abs().max().clamp_min(1e-12))
    ok = agree == 1.0 and rel <= SJ_REL_ERR
    return {**out, "outcome": "reproduces" if ok else "differs", "argmax_agree": agree, "rel_err": rel, "steps": steps}


def run_one(task: str, opts, emit) -> dict:
    """One task end to end; ``emit(rec)`` is called as stages begin (a parent that times the child
    out keeps the last record) and the finished record is returned."""
    import torch

    kind, _, name = task.partition(":")
    zoo = "torchvision" if kind == "tv" else "timm"
    rec: dict = {"task": task, "zoo": zoo, "model": name, "family": None, "stage": "pick", "times": {}}
    try:
        if kind == "timm-family":
            rec["family"], (name, params, rec["candidates"]) = name, pick_timm(name, opts.classes, opts.candidates)
            rec["model"] = name
        else:
            params = meta_params("tv" if kind == "tv" else "timm", name, opts.classes)
            rec["family"] = _tv_module(name) if kind == "tv" else _timm_module(name)
        rec["params"] = params
        if params is not None and params > opts.max_params:
            rec.update(outcome="too_big", stage="done")
            return rec
        rec["stage"] = "build"
        emit(rec)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            model, x, size = fit_input("tv" if kind == "tv" else "timm", name, opts.classes, opts.sizes)
        rec["times"]["build_s"] = time.perf_counter() - t0
        rec.update(input=size, params=count_params(model), batchnorms=randomize_bn(model),
                   zero_weights_randomized=randomize_zero_weights(model))
        if rec["params"] > opts.max_params:
            rec.update(outcome="too_big", stage="done")
            return rec
    except Exception as err:  # noqa: BLE001
        rec.update(outcome="crash", error=first_line(err) + ("" if isinstance(err, NoInputSize) else where(err)))
        return rec
    calib = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    relu_ann = copy.deepcopy(model) if opts.sj else None
    ann2snn_check(model, x, calib, rec, emit, calibrate=opts.calibrate)
    if opts.sj:
        rec["sj"] = {"outcome": "timeout"}
        emit(rec)
        rec["sj"] = spikingjelly_check(relu_ann, x, calib)
    return rec


def _tv_module(name: str) -> str:
    return import_tv().models.get_model_builder(name).__module__.rpartition(".")[2]


def _timm_module(name: str) -> str | None:
    from timm.models._registry import _model_to_module

    return _model_to_module.get(name)


# --------------------------------------------------------------------------------------------
# the sweep (in the parent)
def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def last_record(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def child_command(task: str, args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", task, "--threads", str(args.threads),
           "--classes", str(args.classes), "--candidates", str(args.candidates),
           "--max-params", str(args.max_params), "--sizes", ",".join(map(str, args.sizes))]
    return cmd + ([] if args.sj else ["--no-sj"]) + ([] if args.calibrate else ["--no-calibrate"])


def run_child(task: str, args) -> dict:
    """Run ``--one task`` in a subprocess with the time limit; a record whatever happens to it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(child_command(task, args), check=False, capture_output=True, text=True, timeout=args.timeout,
                           env=env, cwd=HERE.parent)
        stdout, stderr, rc, timed_out = p.stdout, p.stderr, p.returncode, False
    except subprocess.TimeoutExpired as err:
        stdout, stderr, rc, timed_out = _text(err.stdout), _text(err.stderr), None, True
    kind, _, name = task.partition(":")
    rec = last_record(stdout) or {"task": task, "zoo": "torchvision" if kind == "tv" else "timm", "model": name}
    rec["seconds"] = time.perf_counter() - t0
    if rec.pop("final", False):
        return rec
    tail = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")[:300]
    why = f"over the {args.timeout:g} s limit" if timed_out else f"the subprocess ended with code {rc}: {tail}"
    if "outcome" not in rec:
        rec.update(outcome="timeout" if timed_out else "crash", error=f"{why}, in {rec.get('stage', 'start')}")
    elif isinstance(rec.get("sj"), dict):
        rec["sj"] = {"outcome": "timeout" if timed_out else "crash", "error": why}
    return rec


def load_done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by an interrupted write
                continue
            if isinstance(rec, dict) and "task" in rec and "outcome" in rec:
                done[rec["task"]] = rec
    return done


def _g(v, fmt: str = ".2g") -> str:
    return "–" if v is None else format(v, fmt)


def progress_line(i: int, n: int, rec: dict) -> str:
    t, o = rec.get("times", {}), rec["outcome"]
    head = f"[{i:>3}/{n}] {rec['task']:<34} {o:<11}"
    if o in ("exact", "wrong"):
        detail = (f"sites {rec.get('sites')} ({rec.get('active_sites')} firing)  |Δ| {_g(rec.get('max_abs_diff'))} "
                  f"/ {_g(rec.get('scale'), '.3g')}  settle {rec.get('settle_steps')}  in {rec.get('input')}  "
                  f"q {_g(t.get('quantize_s'), '.1f')} c {_g(t.get('convert_s'), '.1f')} "
                  f"v {_g(t.get('verify_s'), '.1f')} s")
    elif o == "refused":
        detail = f"{rec.get('operator')}: {rec.get('reason')}" if rec.get("operator") else rec.get("error", "")[:110]
    elif o == "too_big":
        detail = f"{rec.get('params', 0) / 1e6:.0f} M parameters"
    else:
        detail = (rec.get("error") or "")[:110]
    sj = rec.get("sj", {}).get("outcome")
    return f"{head} {detail}" + (f"  | SJ {sj}" if sj else "") + f"  ({rec.get('seconds', 0):.0f} s)"


def sweep(tasks: list[str], args) -> list[dict]:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(out) if args.resume else {}
    records = []
    for i, task in enumerate(tasks, 1):
        if task in done:
            records.append(done[task])
            print(f"[{i:>3}/{len(tasks)}] {task:<34} (in {out}: {done[task]['outcome']})", flush=True)
            continue
        rec = run_child(task, args)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        records.append(rec)
        print(progress_line(i, len(tasks), rec), flush=True)
    return records


# --------------------------------------------------------------------------------------------
# the report
def slowest(recs: list[dict], key: str) -> dict | None:
    timed = [r for r in recs if r.get("times", {}).get(key) is not None]
    r = max(timed, key=lambda r: r["times"][key], default=None)
    return None if r is None else {"model": r["model"], "seconds": r["times"][key], "input": r.get("input")}


def totals(records: list[dict]) -> dict[str, dict]:
    """Per zoo: counts per outcome, % exact of the models built, the slowest convert and verify,
    the refusals by operator, SpikingJelly's counts."""
    out: dict[str, dict] = {}
    for zoo in ("torchvision", "timm"):
        recs = [r for r in records if r.get("zoo") == zoo]
        if not recs:
            continue
        counts = {o: sum(r["outcome"] == o for r in recs) for o in OUTCOMES}
        built = len(recs) - counts["too_big"]
        refusals: dict[str, list[str]] = {}
        for r in recs:
            if r["outcome"] == "refused":
                refusals.setdefault(r.get("operator") or r.get("error", "")[:60], []).append(r["model"])

        sj = [r["sj"]["outcome"] for r in recs if isinstance(r.get("sj"), dict)]
        sj_refusals: dict[str, list[str]] = {}
        for r in recs:
            if isinstance(r.get("sj"), dict) and r["sj"]["outcome"] in ("refused", "crash"):
                err = re.sub(r" at 0x[0-9a-f]+", "", r["sj"].get("error", ""))[:120]
                sj_refusals.setdefault(err, []).append(r["model"])
        out[zoo] = {"models": len(recs), "built": built, "counts": counts,
                    "exact_pct": 100.0 * counts["exact"] / built if built else 0.0,
                    "too_big": [r["model"] for r in recs if r["outcome"] == "too_big"],
                    "slowest_convert": slowest(recs, "convert_s"), "slowest_verify": slowest(recs, "verify_s"),
                    "refusals": dict(sorted(refusals.items(), key=lambda kv: (-len(kv[1]), kv[0]))),
                    "sj": {"tried": len(sj), **{o: sj.count(o) for o in SJ_OUTCOMES}},
                    "sj_refusals": dict(sorted(sj_refusals.items(), key=lambda kv: (-len(kv[1]), kv[0])))}
    return out


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_row(r: dict) -> str:
    t, o = r.get("times", {}), r["outcome"]
    parts = refusal_parts(r.get("error") or "")
    note = {"refused": f"{parts['operator']}: {parts['reason']}" if parts["operator"] else r.get("error", ""),
            "exact": "", "wrong": f"leaf {r.get('leaf')}"
            if r.get("leaf") else ""}.get(o, r.get("error", ""))
    sj = r.get("sj") or {}
    sj_cell = sj.get("outcome", "")
    if sj.get("rel_err") is not None:
        sj_cell += f" ({sj['argmax_agree']:.0%}, {sj['rel_err']:.2g})"
    params = f"{r['params'] / 1e6:.1f}" if r.get("params") else "–"
    diff = f"{_g(r.get('max_abs_diff'))} / {_g(r.get('scale'), '.3g')}" if o in ("exact", "wrong") else ""
    return (f"| {r.get('zoo')} | {r['model']} | {params} | {r.get('input') or ''} | {o} | {r.get('sites', '')} "
            f"({r.get('active_sites', '')}) | {diff} | {r.get('settle_steps', '') if diff else ''} | "
            f"{_g(t.get('quantize_s'), '.2f')} | {_g(t.get('convert_s'), '.2f')} | {_g(t.get('verify_s'), '.2f')} "
            f"| {_cell(sj_cell)} | {_cell(note[:140])} |")


def totals_lines(tot: dict[str, dict]) -> list[str]:
    lines = [("| zoo | models | exact | wrong | refused | no site | untraceable | crash | timeout | too big | "
              "% exact (of those built) |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for zoo, t in tot.items():
        c = t["counts"]
        lines.append(f"| {zoo} | {t['models']} | " + " | ".join(str(c[o]) for o in OUTCOMES) +
                     f" | {t['exact_pct']:.0f} % |")
    lines.append("")
    for zoo, t in tot.items():
        if t["too_big"]:
            lines.append(f"- {zoo}: not built, over the parameter limit: {', '.join(t['too_big'])}.")
        for key, what in (("slowest_convert", "convert"), ("slowest_verify", "verify")):
            s = t[key]
            if s:
                lines.append(f"- {zoo}: slowest {what}: {s['model']}, {s['seconds']:.1f} s at {s['input']}×{s['input']}.")
        sj = t["sj"]
        if sj["tried"]:
            lines.append(f"- {zoo}: SpikingJelly FXConverter + RateCodingRecipe: of {sj['tried']} models it accepts "
                         f"{sj['reproduces'] + sj['differs']} (converted with a spiking neuron and ran T = {SJ_STEPS} "
                         f"steps), of which {sj['reproduces']} reproduce their ANN; {sj['no_neuron']} converted "
                         f"without a neuron, {sj['refused']} refused, {sj['crash']} failed to run, "
                         f"{sj['timeout']} timed out.")
    lines.append("")
    for zoo, t in tot.items():
        if t["refusals"]:
            lines += [f"Refusals by operator ({zoo}):", ""]
            lines += [f"- `{_cell(op)}`: {len(ms)} ({', '.join(ms)})" for op, ms in t["refusals"].items()]
            lines.append("")
        if t["sj_refusals"]:
            lines += [f"SpikingJelly's refusals and failures ({zoo}):", ""]
            lines += [f"- {_cell(err)}: {len(ms)} ({', '.join(ms)})" for err, ms in t["sj_refusals"].items()]
            lines.append("")
    return lines


def machine(threads: int) -> str:
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    vers = []
    for pkg in ("torch", "torchvision", "timm", "spikingjelly"):
        try:
            vers.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return f"{cpu} ({os.cpu_count()} cores), {threads} torch thread(s) per model, CPU only; {', '.join(vers)}"


def settings_text(args) -> str:
    calib = ("λ calibrated to the 99.9th percentile on a separate random batch of 4" if args.calibrate
             else "λ = 8 (quantize's default, not calibrated)")
    return (f"Each model in its own subprocess ({args.timeout:g} s limit): random weights, {args.classes} classes, "
            "random BatchNorm statistics, all-zero weight matrices (torchvision's ViT head) made random, the smallest "
            "input of "
            f"{', '.join(map(str, args.sizes))} px that the float model takes, a batch of 2; "
            f"`ann2snn.quantize(model, {LEVELS})`, {calib}; `ann2snn.convert(q)`; `ann2snn.verify(q, snn, x)` "
            "(float64, tolerance 1e-4 · max(1, |logit|)). timm: the model with the fewest parameters among "
            f"at most {args.candidates} candidates per family (the module that registers it). Models over "
            f"{args.max_params / 1e6:g} M parameters are not built. SpikingJelly: `FXConverter(RateCodingRecipe("
            f"[calibration batch], mode='Max'))` on the ReLU ANN, T = {SJ_STEPS} steps; it reproduces the ANN when "
            f"the argmax of the step mean agrees on every sample and max |mean − ANN| / max |ANN| ≤ {SJ_REL_ERR}. "
            "Definitions: `benchmarks/zoo.py`'s docstring. Sites (firing): QCFS sites, and those with a non-zero "
            "output on the batch.")


def markdown(records: list[dict], args, command: str) -> str:
    header = ("| zoo | model | params M | input | outcome | sites (firing) | max abs diff / scale | settle | "
              "quantize s | convert s | verify s | SpikingJelly (argmax agree, rel err) | note |")
    lines = ["<!-- zoo:start -->", "## The zoos: torchvision and timm through the public API", "",
             f"Command: `{command}`. Machine: {machine(args.threads)}.", "", settings_text(args), ""]
    lines += totals_lines(totals(records))
    lines += [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [model_row(r) for r in records]
    lines += ["", "<!-- zoo:end -->"]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("tv", "timm"), help="one zoo only")
    p.add_argument("--limit", type=int, help="the first N models of each zoo")
    p.add_argument("--models", help="comma-separated tasks: tv:NAME, timm:NAME, timm-family:MODULE or a bare name")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    p.add_argument("--out", default="runs/zoo/zoo.jsonl", help="raw results, one JSON line per model, appended")
    p.add_argument("--resume", action="store_true", help="skip the tasks already in --out")
    p.add_argument("--write", action="store_true", help="put the table and totals into benchmarks/RESULTS.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--candidates", type=int, default=20, help="timm: candidates per family for the smallest")
    p.add_argument("--max-params", type=float, default=MAX_PARAMS)
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SIZES))
    p.add_argument("--no-sj", dest="sj", action="store_false", help="skip SpikingJelly's converter")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="keep λ = 8")
    p.add_argument("--one", metavar="TASK", help="run one task here and print its JSON record")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        import torch

        if "--threads" in argv:  # the parent's child; in-process callers keep their own threads
            torch.set_num_threads(args.threads)
        rec = run_one(args.one, args, lambda r: print(json.dumps(r), flush=True))
        print(json.dumps({**rec, "final": True}), flush=True)
        return 0
    import shlex

    tasks = tasks_for(args)
    print(f"zoo: {len(tasks)} model(s), {args.timeout:g} s each at most, results in {args.out}", flush=True)
    records = sweep(tasks, args)
    command = "python benchmarks/zoo.py " + " ".join(shlex.quote(a) for a in argv)
    md = markdown(records, args, command)
    print("\n".join(totals_lines(totals(records))))
    Path(args.out).with_suffix(".md").write_text(md)
    if args.write:
        from _results import write_marked

        write_marked("zoo", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
