"""Greedy text generation with a converted language model, beside its quantized ANN.

Each new token is one simulation of its own: the current sequence is fed for ``t`` drive steps,
then ``extra_t`` zero-input steps let the network settle, and the next token is the argmax of
the last position's output mean (the cumulative sum divided by t).  No state is carried from one
token to the next (the network is reset, so no key/value cache is needed: the causal mask makes
every position's output depend on the tokens up to it only).  The quantized ANN decodes the same
prompts greedily on its own outputs, so the two sequences can be compared token by token.

The converted network was traced for one sequence length (its ``context``, the example input's
length), so the sequence is written into a window of that length: left-aligned, padded on the
right (the padding is after the last real token, which causal attention never lets it reach),
and read at the last real position; a sequence longer than the window keeps its last
``context`` tokens.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ann2snn._checks import check_int, check_module
from ann2snn.progress import progress
from ann2snn.results import Generation
from ann2snn.simulate import Simulator, logits_of


def window(seqs: torch.Tensor, context: int, pad: int = 0) -> tuple[torch.Tensor, int]:
    """([B, context] input, the position to read) for sequences ``seqs`` [B, n] of equal length."""
    n = seqs.shape[1]
    if n >= context:
        return seqs[:, n - context:], context - 1
    x = torch.full((seqs.shape[0], context), pad, dtype=seqs.dtype, device=seqs.device)
    x[:, :n] = seqs
    return x, n - 1


@torch.no_grad()
def _next_qann(ann: nn.Module, seqs: torch.Tensor, context: int) -> torch.Tensor:
    x, pos = window(seqs, context)
    return logits_of(ann(x))[:, pos].argmax(-1)


@torch.no_grad()
def _next_snn(sim: Simulator, seqs: torch.Tensor, context: int, t: int, extra_t: int) -> torch.Tensor:
    x, pos = window(seqs, context)
    cum = None
    for cum in sim.iter_run(x, t, t + extra_t):
        pass
    return (logits_of(cum)[:, pos] / t).argmax(-1)


def _decode(step, prompts: torch.Tensor, max_new_tokens: int, desc: str) -> tuple[torch.Tensor, float]:
    """(the generated tokens [B, max_new_tokens], seconds per generated token) of greedy decoding
    with ``step(seqs) -> next tokens``, with progress titled ``desc``."""
    seqs = prompts
    start = time.perf_counter()
    for _ in progress(range(max_new_tokens), desc=desc, unit="tokens"):
        seqs = torch.cat([seqs, step(seqs).unsqueeze(1).to(seqs.dtype)], dim=1)
    return seqs[:, prompts.shape[1]:], (time.perf_counter() - start) / max(max_new_tokens, 1)


def _context(ann: nn.Module, sim: Simulator, context: int | None) -> int:
    """The window length: ``context``, else the ANN's, else the traced example's; it must be the
    length the network was traced for, when that is known."""
    shape = getattr(sim.snn, "example_shape", None)  # the window the network was traced for
    traced = shape[0] if shape else None
    context = context or getattr(ann, "context", None) or traced
    if not context:
        raise ValueError("generate: the window length is unknown; pass context= (the sequence length the network "
                         "was converted for).")
    context = check_int("generate", "context", context, 1, "tokens per window")
    if traced is not None and context != traced:
        raise ValueError(f"generate: context={context}, but the network was converted for windows of {traced} tokens "
                         f"(its example input); pass context={traced}, or convert with an example of {context} tokens.")
    return context


def _prompt_ids(prompts, ann: nn.Module) -> torch.Tensor:
    """The prompts as a [B, n] long tensor of valid token ids (a TypeError / ValueError otherwise)."""
    p = torch.as_tensor(prompts)
    if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
        raise TypeError(f"generate: prompts must be integer token ids, got {p.dtype}; pass e.g. a list of ints or a "
                        "long tensor.")
    p = p.long()
    p = p.unsqueeze(0) if p.dim() == 1 else p
    if p.dim() != 2 or p.shape[1] == 0:
        raise ValueError(f"generate: prompts must be token ids [n] or [B, n] with n >= 1, got shape {list(p.shape)}")
    vocab = next((m.num_embeddings for m in ann.modules() if isinstance(m, nn.Embedding)), None)
    if bool((p < 0).any()) or (vocab is not None and bool((p >= vocab).any())):
        raise ValueError(f"generate: prompt token ids must lie in 0..{'?' if vocab is None else vocab - 1} (the "
                         f"vocabulary), got {int(p.min())}..{int(p.max())}")
    return p


def generate(ann: nn.Module, sim: Simulator, prompts, max_new_tokens: int, t: int, extra_t: int = 0,
             context: int | None = None) -> Generation:
    """Greedy continuations of ``prompts`` (token ids: a list, a [n] or [B, n] tensor; one length
    per batch) by the quantized ANN ``ann`` and by the converted network of ``sim``, each on its
    own outputs, ``max_new_tokens`` each; the SNN runs ``t`` input steps and ``extra_t`` settle
    steps per token.  ``context``: the window length the network was converted for (default: the
    ANN's ``context`` attribute).  Returns a :class:`~ann2snn.results.Generation`."""
    check_module("generate", "ann", ann, "the quantized language model")
    if not isinstance(sim, Simulator):
        raise TypeError(f"generate: sim must be a Simulator of the converted network, got {type(sim).__name__}. "
                        "Pass ann2snn.Simulator(ann2snn.convert(ann, example_input=...)).")
    max_new_tokens = check_int("generate", "max_new_tokens", max_new_tokens, 1, "tokens to generate")
    t = check_int("generate", "t", t, 1, "input steps per token")
    extra_t = check_int("generate", "extra_t", extra_t, 0, "settle steps per token")
    context = _context(ann, sim, context)
    p = _prompt_ids(prompts, ann)
    dev = next(ann.parameters()).device
    p = p.to(dev)
    was = ann.training
    ann.eval()
    try:
        qann, q_s = _decode(lambda s: _next_qann(ann, s, context), p, max_new_tokens, "QANN greedy")
        snn, s_s = _decode(lambda s: _next_snn(sim, s, context, t, extra_t), p, max_new_tokens,
                           f"SNN greedy t={t}+{extra_t}")
    finally:
        ann.train(was)
    differ = [None if bool((a == b).all()) else int((a != b).nonzero()[0]) for a, b in zip(qann, snn)]
    return Generation(prompts=p.tolist(), qann=qann.tolist(), snn=snn.tolist(),
                      identical=all(d is None for d in differ), first_difference=differ, t=t, extra_t=extra_t,
                      spike_levels=sim.spike_levels, steps_per_token=t + extra_t, seconds_per_token_qann=q_s,
                      seconds_per_token_snn=s_s)


__all__ = ["generate", "window"]
