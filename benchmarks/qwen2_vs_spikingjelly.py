"""Language models: SpikingJelly's Qwen2 recipe and ann2snn side by side, on the same tiny Qwen2
weights and the same tokens (issue 21).

A Qwen2 of ``hf:qwen2``'s small size (dim 64, 2 layers, 4 heads, 2 key/value heads, vocabulary
256: bytes) is trained briefly in float32 (fixed seed) on the bytes of Python's ``pydoc_data.topics``
text, so that its perplexity means something; the evaluation tokens are a held-out stretch of the
same text.  Then:

- **SpikingJelly** (``spikingjelly.activation_based.ann2snn.recipes.qwen2``): for each T,
  ``calibrate_qwen2_snn`` (per-channel signed QCFS scales of the input, q, k, v and the MLP
  product, from the float model) and ``ModuleConverter(Qwen2SNNRecipe(...)).convert(model)``
  with ``Qwen2SNNConfig(time_steps=T, calibration_levels=T)`` (the finest quantisation a T-step
  count can carry); its logits are those of the T-step run.  Its reference is the float model it
  was converted from: it is a post-training conversion without a quantized ANN of its own.
- **ann2snn**: ``quantize(levels=L, placement=…, calibrate=…)`` (post-training too: λ from the
  99.9th percentile, no fine-tuning), ``convert``, then the :class:`~ann2snn.simulate.Simulator`:
  the output of a t-step run is its cumulative sum / t.  Its reference is its own QANN (which
  ``verify`` says it settles on exactly); ours against the float model is given too.

Two step counts per method: (a) logits within max|Δ| ≤ 1e-3·max|ref| with the same argmax on
every token; (b) perplexity within 0.5 % of the reference's.  "Steps" is the least T (in the
sweep) from which the criterion holds at every larger T of the sweep.  For ann2snn two ways to
spend steps: t-step runs (input on every step), and t = L input steps followed by zero-input
steps (``extra_t``), counted as t + extra_t.

    OMP_NUM_THREADS=1 python benchmarks/qwen2_vs_spikingjelly.py            # prints the table
    OMP_NUM_THREADS=1 python benchmarks/qwen2_vs_spikingjelly.py --write    # and writes RESULTS.md
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import torch
import torch.nn.functional as F

SECTION = "qwen2-vs-spikingjelly"
REL_TOL, PPL_TOL = 1e-3, 0.005


def corpus() -> torch.Tensor:
    """The bytes of Python's pydoc topics (the standard library's own documentation text)."""
    from pydoc_data import topics

    text = "".join(topics.topics[k] for k in sorted(topics.topics)).encode()
    return torch.tensor(list(text), dtype=torch.long)


def windows(data: torch.Tensor, n: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - seq, (n,), generator=gen)
    return torch.stack([data[s:s + seq] for s in starts.tolist()])


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """exp of the mean next-token cross-entropy (position i scores token i + 1)."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1))
    return math.exp(float(nll))


def compare(logits: torch.Tensor, ref: torch.Tensor, ids: torch.Tensor) -> dict:
    rel = float((logits - ref).abs().max() / ref.abs().max())
    same = bool((logits.argmax(-1) == ref.argmax(-1)).all())
    ppl, ppl_ref = perplexity(logits, ids), perplexity(ref, ids)
    return {"rel": rel, "argmax": same, "ppl": ppl, "ppl_rel": abs(ppl - ppl_ref) / ppl_ref,
            "a": rel <= REL_TOL and same, "b": abs(ppl - ppl_ref) <= PPL_TOL * ppl_ref}


def steps_needed(curve: list[tuple[int, dict]], key: str) -> int | None:
    """The least T of the sweep from which ``key`` holds at every larger T (None: not by the end)."""
    found = None
    for steps, m in curve:
        found = (found or steps) if m[key] else None
    return found


def train_float(args, data: torch.Tensor):
    """hf:qwen2 at the benchmark's size, trained ``args.train_steps`` Adam steps on ``data``."""
    from ann2snn.models import create_model

    torch.manual_seed(args.seed)
    model = create_model("hf:qwen2", dim=args.dim, depth=args.depth, num_heads=4, num_kv_heads=2, context=args.seq)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.train_steps):
        ids = windows(data, 16, args.seq, gen)
        loss = F.cross_entropy(model(ids)[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def spikingjelly_curve(lm, calib: list[torch.Tensor], ids: torch.Tensor, ref: torch.Tensor, ts: list[int]):
    """SpikingJelly's Qwen2 SNN of T steps (calibration_levels = T), for each T of ``ts``."""
    from spikingjelly.activation_based.ann2snn import ModuleConverter
    from spikingjelly.activation_based.ann2snn.recipes.qwen2 import (Qwen2SNNConfig, Qwen2SNNRecipe,
                                                                    calibrate_qwen2_snn)

    curve = []
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in calib]
    for t in ts:
        cfg = Qwen2SNNConfig(time_steps=t, calibration_levels=t)
        snn = ModuleConverter(Qwen2SNNRecipe(calibrate_qwen2_snn(lm, batches, cfg), cfg)).convert(lm)
        curve.append((t, compare(snn(input_ids=ids).logits.float(), ref, ids)))
    return curve


@torch.no_grad()
def ours(model, calib: list[torch.Tensor], ids: torch.Tensor, float_ref: torch.Tensor, levels: int,
         placement: str, t_max: int) -> dict:
    """Our QANN (post-training: calibrated λ), its SNN's t-step runs for t = 1..t_max and the
    run of t = L input steps plus 0..t_max − L zero-input steps."""
    import ann2snn
    from ann2snn.simulate import Simulator

    q = ann2snn.quantize(model, levels, placement=placement, example_input=ids, calibrate=calib).eval()
    qref = q(ids)
    snn = ann2snn.convert(q, example_input=ids)
    ok = ann2snn.verify(q, snn, ids[:1]).ok
    sim = Simulator(snn)
    rows = sim.run_rows(ids, list(range(1, t_max + 1)))
    runs = [(t, rows[t][0] / t) for t in range(1, t_max + 1)]
    settle = sim.run_rows(ids, [levels], extra_t=t_max - levels)[levels] / levels
    extra = [(levels + e, settle[e]) for e in range(settle.shape[0])]
    return {"levels": levels, "placement": placement, "verify_ok": ok, "sites": sum(isinstance(m, ann2snn.QCFS)
                                                                                   for m in q.modules()),
            "qann_vs_float": compare(qref, float_ref, ids),
            "runs": [(t, compare(y, qref, ids)) for t, y in runs],
            "extra": [(t, compare(y, qref, ids)) for t, y in extra],
            "runs_vs_float": [(t, compare(y, float_ref, ids)) for t, y in runs],
            "extra_vs_float": [(t, compare(y, float_ref, ids)) for t, y in extra]}


def _steps(curve, key) -> str:
    n = steps_needed(curve, key)
    return f"{n}" if n is not None else f"> {curve[-1][0]}"


def _at(curve, t) -> str:
    m = dict(curve).get(t)
    return "–" if m is None else f"{m['rel']:.2g} / {100 * m['ppl_rel']:.2f} %"


def markdown(res: dict, args) -> str:
    f = res["float"]
    lines = [f"<!-- {SECTION}:start -->", "## Language models: SpikingJelly's Qwen2 recipe side by side", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/qwen2_vs_spikingjelly.py --write` ({res['seconds']:.0f} s). "
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
             f"transformers {res['transformers']}, spikingjelly {res['sj_version']}, CPU only.", "",
             f"One Qwen2 (`hf:qwen2`: dim {args.dim}, {args.depth} layers, 4 heads, 2 key/value heads, byte vocabulary), "
             f"trained {args.train_steps} Adam steps in float32 (seed {args.seed}) on the bytes of Python's "
             f"`pydoc_data.topics`; evaluated on {args.batch} held-out windows of {args.seq} bytes (perplexity of the "
             f"float model: {f['ppl']:.2f}). Both conversions are post-training (calibration on "
             f"{args.calib} windows, no fine-tuning). (a): max|Δ| ≤ 1e-3·max|ref| and the same argmax on every token; "
             "(b): perplexity within 0.5 % of the reference's. Steps: the least T of the sweep from which the "
             "criterion holds at every larger T swept. SpikingJelly's reference is the float model it converts "
             "(it has no quantized ANN); ann2snn's is its own QANN, and ann2snn against the float model is given "
             "too. SpikingJelly: one conversion per T with `calibration_levels = T`, T ∈ "
             f"{{{', '.join(map(str, res['sj_ts']))}}}. ann2snn: t-step runs (input on every step), and t = L input "
             "steps plus zero-input steps (t + extra_t).", "",
             "| method | reference | steps for (a) | steps for (b) | rel. max abs Δ / Δppl at T = 8; 32 |",
             "|---|---|---|---|---|"]
    sj = res["spikingjelly"]
    lines.append(f"| SpikingJelly `Qwen2SNNRecipe` (levels = T) | float model | {_steps(sj, 'a')} | {_steps(sj, 'b')} | "
                 f"{_at(sj, 8)}; {_at(sj, 32)} |")
    for o in res["ours"]:
        name = f"ann2snn, L = {o['levels']}, `{o['placement']}` ({o['sites']} sites)"
        for kind, label in (("runs", "t-step runs"), ("extra", f"t = {o['levels']} + extra_t")):
            for ref, suffix in (("", "its QANN"), ("_vs_float", "float model")):
                c = o[kind + ref]
                lines.append(f"| {name}, {label} | {suffix} | {_steps(c, 'a')} | {_steps(c, 'b')} | "
                             f"{_at(c, 8)}; {_at(c, 32)} |")
    lines += ["", "SpikingJelly against the float model, by T (rel. max abs Δ / perplexity off): " + "; ".join(
        f"{t}: {m['rel']:.2g} / {100 * m['ppl_rel']:.2f} %" for t, m in sj) + f" ({res['sj_seconds']:.0f} s for the "
        f"sweep; ann2snn's {len(res['ours'])} conversions and runs: {res['ours_seconds']:.0f} s)."]
    lines += ["", "The QANNs against the float model (what quantization alone costs, at any T): " + "; ".join(
        f"L = {o['levels']} `{o['placement']}`: rel. max|Δ| {o['qann_vs_float']['rel']:.3g}, perplexity "
        f"{o['qann_vs_float']['ppl']:.2f} ({100 * o['qann_vs_float']['ppl_rel']:.1f} % off), argmax "
        f"{'the same' if o['qann_vs_float']['argmax'] else 'differs'} on "
        f"{'every' if o['qann_vs_float']['argmax'] else 'some'} token; verify exact: {o['verify_ok']}"
        for o in res["ours"]) + ".", f"<!-- {SECTION}:end -->", ""]
    return "\n".join(lines)


def run(args) -> dict:
    from importlib.metadata import version

    from ann2snn._compat import silence_noise

    silence_noise()  # torch's "Triton not available" warnings
    start = time.time()
    data = corpus()
    split = int(0.9 * data.numel())
    model = train_float(args, data[:split])
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = windows(data[split:], args.batch, args.seq, gen)
    calib = [windows(data[:split], 8, args.seq, gen) for _ in range(args.calib // 8)]
    with torch.no_grad():
        ref = model(ids)
    res = {"float": {"ppl": perplexity(ref, ids)}, "sj_ts": args.sj_steps,
           "transformers": version("transformers"), "sj_version": version("spikingjelly")}
    t0 = time.time()
    res["spikingjelly"] = spikingjelly_curve(model.lm, calib, ids, ref, args.sj_steps)
    t1 = time.time()
    res["ours"] = [ours(model, calib, ids, ref, lv, pl, args.t_max) for lv in args.levels for pl in args.placements]
    res["sj_seconds"], res["ours_seconds"] = t1 - t0, time.time() - t1
    res["seconds"] = time.time() - start
    return res


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="8,16", help="QCFS levels L of ann2snn's QANNs (comma-separated)")
    p.add_argument("--placements", default="activations,synapses")
    p.add_argument("--sj-steps", default=",".join(str(2 ** k) for k in range(11)), help="SpikingJelly's T sweep")
    p.add_argument("--t-max", type=int, default=64, help="ann2snn's longest run")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="evaluation windows")
    p.add_argument("--calib", type=int, default=32, help="calibration windows (multiple of 8)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    args.levels = [int(v) for v in args.levels.split(",")]
    args.placements = args.placements.split(",")
    args.sj_steps = [int(v) for v in args.sj_steps.split(",")]
    return args


def main(argv=None) -> int:
    torch.set_num_threads(1)
    args = parse(argv)
    md = markdown(run(args), args)
    print(md)
    if args.write:
        from _results import write_marked

        write_marked(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
