"""A language model through the Python API: build a causal decoder, quantize it, train it on the
embedded corpus with next-token cross-entropy, convert it, verify it, score its perplexity per
step and generate text with the SNN beside its QANN.

    python examples/language_model.py            # a few hundred training steps (minutes on a CPU)
    python examples/language_model.py --quick    # a few steps (what the test suite runs)

The corpus is Python's own ``pydoc_data.topics`` (PSF License), as bytes; see README "Datasets".
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

import ann2snn
from ann2snn.app.text import decode, encode, python_docs_text

CONTEXT = 32


def windows(data: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random windows of CONTEXT bytes and their next-byte targets."""
    start = torch.randint(0, len(data) - CONTEXT - 1, (n,), generator=generator)
    chunk = torch.stack([data[s: s + CONTEXT + 1] for s in start.tolist()]).long()
    return chunk[:, :-1], chunk[:, 1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = encode(python_docs_text())
    cut = int(0.9 * len(data))
    train, test = data[:cut], data[cut:]

    # a small GPT (LayerNorm, GELU, learned positions); placement="synapses": every Linear and product reads spikes
    model = ann2snn.create_model("gpt", dim=64, num_heads=4, depth=1, context=CONTEXT)
    example = windows(train, 8, g)[0]
    q = ann2snn.quantize(model, levels=8, lambda_init=2.0, placement="synapses", example_input=example,
                         calibrate=[windows(train, 16, g)[0] for _ in range(2)])
    opt = torch.optim.AdamW(q.parameters(), lr=3e-3)
    steps = 20 if args.quick else 400
    for step in range(steps):
        x, y = windows(train, 32, g)
        loss = F.cross_entropy(q(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    x, y = windows(test, 32, g)
    with torch.no_grad():
        qann_ppl = math.exp(float(F.cross_entropy(q(x).flatten(0, 1), y.flatten())))
    print(f"trained {steps} steps; QANN perplexity {qann_ppl:.3f} per byte on 32 test windows")

    snn = ann2snn.convert(q, example_input=example)  # token ids are the input; the embedding reads them on drive steps
    res = ann2snn.verify(q, snn, x[:8])
    print(f"verify max |SNN - QANN| = {res.max_abs_diff:.2e} ({'OK' if res.ok else 'FAILED'}, settled after "
          f"{res.settle_steps} steps)")
    sim = ann2snn.Simulator(snn)
    table = ann2snn.evaluate_table(sim, [(x, y)], rows=[1, 4, 8], extra_t=8)
    for t in (1, 4, 8):
        ppl = [math.exp(v) for v in table[t].loss]
        print(f"SNN t = {t}: perplexity after t + e steps, e = 0..8: " + " ".join(f"{v:.3f}" for v in ppl))
    prompt = encode("The ").long()
    gen = ann2snn.generate(q, sim, prompt, max_new_tokens=12, t=8, extra_t=8)
    print(f"generate from 'The ': QANN {decode(gen.qann[0])!r}, SNN {decode(gen.snn[0])!r}, identical: {gen.identical}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
