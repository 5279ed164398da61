"""Stateful spiking operators of a converted network.

Every operator keeps its state in spikingjelly ``MemoryModule`` memories, so
``spikingjelly.activation_based.functional.reset_net`` (which the simulator calls before every
batch) restores all of it — including the spike count that the original code kept outside the
neuron.  Each module processes ONE time step per call; the simulator owns time.

- :func:`signed_if_step` / :class:`ScaledNeuron`: the two-sign, spike-capped integrate-and-fire
  neuron of the QCFS conversion (Bu et al., ICLR 2022; Hu et al., "Fast-SNN", TPAMI 2023, for
  negative spikes), working in units of the QCFS threshold λ.
- :class:`MaxPoolNeuron`: max-pool of running input sums (Li, Ma & Furber, "Quantization framework
  for fast spiking neural networks", Front. Neurosci. 16:918793, 2022).
- :class:`SpikeMatMul` / :class:`ECSoftmax`: spike-equivalent product of two spiking operands and
  expectation-compensated softmax (Huang et al., "ECMT", 2024; You et al., "SpikeZIP-TF",
  ICML 2024), whose running output sums equal ``n × f(running means)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base
from torch import nn

NEG_RULES = ("exact", "lazy")  # v < 0 (Fast-SNN, ST-BIF) | v <= −θ (the original toolkit)
OLD_NEG_RULES = {"seed": "lazy"}  # spellings of earlier versions, still accepted


class Clock:
    """Time shared by the operators of one converted network; advanced by the simulator only.

    ``step``: steps taken since the last reset; ``drive``: whether the current step feeds the input
    (and biases); ``driven``: drive steps so far (the ``n`` by which running sums are averaged).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step, self.driven, self.drive = 0, 0, True

    def tick(self, drive: bool) -> None:
        self.step += 1
        self.drive = bool(drive)
        self.driven += int(drive)

    def state(self) -> tuple[int, int, bool]:
        return self.step, self.driven, self.drive

    def load(self, state: tuple[int, int, bool]) -> None:
        self.step, self.driven, self.drive = state


def bits_per_step(spike_levels: int) -> float:
    """Information one signed m-level spike can carry per step: log2(2m + 1) bits (the values
    −m..m); 1.58 for a binary signed spike.  Reported next to T so that multi-level results are
    compared with binary ones at equal spike-step budget T × bits."""
    return math.log2(2 * int(spike_levels) + 1)


def check_spike_levels(m) -> int:
    """``m`` as an int ≥ 1, or a ValueError that says what is accepted."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"spike_levels must be a whole number >= 1 (1: binary spikes), got {m!r}")
    return m


def check_neg_rule(rule: str) -> str:
    """The negative-spike rule ``rule`` (an old spelling mapped to its name), or a ValueError."""
    rule = OLD_NEG_RULES.get(rule, rule) if isinstance(rule, str) else rule
    if rule not in NEG_RULES:
        raise ValueError(f"neg_rule must be one of {NEG_RULES}, got {str(rule)[:40]!r}")
    return rule


def signed_if_step(v: torch.Tensor, n: torch.Tensor, u: torch.Tensor, theta: float = 1.0,
                   cap: float = math.inf, neg_rule: str = "exact", m: int = 1, floor: float = 0.0):
    """One step of the signed, capped IF neuron; returns ``(spike, v, n)``.

    ``v`` membrane potential, ``n`` net spike count so far, ``u`` input current.  A positive spike
    needs ``v >= theta`` and ``n < cap``; a negative spike needs ``n > 0`` and ``v < 0``
    (``neg_rule="exact"``, Fast-SNN / ST-BIF) or ``v <= -theta`` (``"lazy"``, the original code).
    Reset by subtraction: ``v -= spike·theta``.  ``spike`` is in {-1, 0, +1}.

    ``floor`` < 0 (a signed site): the net count may go down to ``floor`` (−L), so a negative
    spike needs ``n > floor`` instead of ``n > 0``; the count then settles on the signed QCFS
    staircase, ⌊X/θ + ½⌋ clamped to [floor, cap].

    ``m > 1`` (spike_levels): up to ``m`` spikes of one sign per step, a graded count in −m..m, as
    burst spikes (Li & Zeng, "Efficient and accurate conversion of spiking neural network with
    burst spikes", IJCAI 2022) and multi-threshold neurons (Huang et al., "ECMT", ACM MM 2024)
    send: the step emits at once what m binary steps with no further input would emit, i.e.
    ``min(⌊v/θ⌋, m, cap − n)`` positive spikes, or ``min(⌈−v/θ⌉, m, n − floor)`` negative ones where
    ``v < 0`` (``⌊−v/θ⌋`` where ``v <= −θ`` under ``"lazy"``), reset by subtraction as above.
    """
    neg_rule = check_neg_rule(neg_rule)
    if m != 1:
        return _multi_level_step(v, n, u, theta, cap, neg_rule, m, floor)
    v = v + u
    pos = (v >= theta) & (n < cap)
    neg = ((v < 0) if neg_rule == "exact" else (v <= -theta)) & (n > floor)
    if theta > 0 and pos.shape == v.shape:
        # Same values, fewer passes over memory (this runs at every site on every step): with
        # θ > 0 a positive and a negative spike exclude each other, so pos − neg is pos with −1
        # written where neg; ``v`` is the fresh tensor from ``v + u`` (never the caller's state),
        # so the reset may be done in place; spike·θ is exact, so v − θ·spike rounds the same.
        spike = pos.to(v.dtype).masked_fill_(neg, -1.0)
        v.sub_(spike, alpha=theta)
        return spike, v, n + spike
    spike = pos.to(v.dtype) - neg.to(v.dtype)
    return spike, v - spike * theta, n + spike


def _multi_level_step(v, n, u, theta, cap, neg_rule, m, floor=0.0):
    if not theta > 0:
        raise ValueError(f"a multi-level neuron needs a threshold > 0, got {theta}")
    v = v + u
    room = (cap - n) if math.isfinite(cap) else torch.full_like(n, float(m))
    pos = torch.floor(v / theta).clamp_(min=0).minimum(room.clamp(min=0)).clamp_(max=m)
    if neg_rule == "exact":
        neg = torch.where(v < 0, torch.ceil(-v / theta), torch.zeros_like(v))
    else:
        neg = torch.where(v <= -theta, torch.floor(-v / theta), torch.zeros_like(v))
    neg = neg.minimum((n - floor).clamp(min=0)).clamp_(max=m)
    spike = pos - neg
    return spike, v - spike * theta, n + spike


class ScaledNeuron(base.MemoryModule):
    """Replaces a QCFS site: ``λ · θ · signed_if(x / λ)``; output per step ∈ {−λθ, 0, +λθ}.

    ``theta`` is the threshold in units of λ (1 in the original; the simulator may raise it to
    t/L so that t steps reproduce the trained L levels), ``cap`` bounds the net count (the
    original's Tmax).  The membrane starts at θ/2 (the "0.5 precharge").

    With threshold t/L and cap L this is SpikeZIP's signed neuron, spikingjelly's
    ``STBIFNode(q_threshold=λ·t/L, level=L+1)``, step for step
    (``tests/test_spikingjelly_equivalents.py``).  It is kept as its own module because the
    simulator retunes θ and cap per table row on the same instance, and because the ``per_step``
    preset needs the original's lazy negative rule, which STBIF does not have.

    ``m`` (spike_levels, set by the simulator) is the most spikes it may send per step and sign:
    1 is binary; with ``m > 1`` the output per step is k·λθ for k in −m..m (:func:`signed_if_step`).
    ``signed`` (from a signed QCFS site): the net count runs from −cap to cap, not from 0.
    """

    def __init__(self, lam: float, levels: int | None = None, neg_rule: str = "exact",
                 theta: float = 1.0, cap: float = math.inf, signed: bool = False):
        super().__init__()
        self.lam = float(lam)
        self.levels = levels  # the trained L of the QCFS site this neuron replaced
        self.neg_rule = check_neg_rule(neg_rule)
        self.theta = float(theta)
        self.cap = float(cap)
        self.m = 1  # spike_levels: spikes per step and sign
        self.signed = bool(signed)  # a signed QCFS site: the count runs from −cap to cap
        self.register_memory("v", None)
        self.register_memory("n", None)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.v is None:
            self.v = torch.full_like(x, self.theta / 2)
            self.n = torch.zeros_like(x)
        spike, self.v, self.n = signed_if_step(self.v, self.n, x / self.lam, self.theta, self.cap,
                                               self.neg_rule, self.m, -self.cap if self.signed else 0.0)
        return spike.mul_(self.lam * self.theta)  # spike is fresh and not kept: scale in place

    def extra_repr(self) -> str:
        return (f"lam={self.lam:.4g}, theta={self.theta:g}, cap={self.cap:g}, "
                f"neg_rule={self.neg_rule}" + (f", m={self.m}" if self.m != 1 else "")
                + (", signed" if self.signed else ""))


class MaxPoolNeuron(base.MemoryModule):
    """Emits ``maxpool(S_t) − maxpool(S_{t−1})`` for the running input sum ``S_t``.

    The outputs then sum to ``maxpool(Σ inputs)``: max-pool of rates, not of individual spikes.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.register_memory("acc", None)
        self.register_memory("pooled", None)

    @classmethod
    def from_maxpool(cls, pool: nn.MaxPool2d) -> "MaxPoolNeuron":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acc = x if self.acc is None else self.acc + x
        pooled = self._pool(self.acc)
        out = pooled if self.pooled is None else pooled - self.pooled
        self.pooled = pooled
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _RunningOp(base.MemoryModule):
    """Base of operators whose running output sum must equal ``R_k = n_k · f(running means)``.

    Each step emits ``R_k − R_{k−1}``, where ``n_k`` is the number of drive steps so far, read from
    the shared :class:`Clock` (after the drive phase the means are still divided by the drive
    length, so zero-drive steps only let the result settle).
    """

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock
        self.register_memory("prev", None)

    def _emit(self, running: torch.Tensor) -> torch.Tensor:
        out = running if self.prev is None else running - self.prev
        self.prev = running
        return out


class _Bilinear(_RunningOp):
    """A product of two spiking operands, bilinear in both: R_k = product(A_k, B_k) / n_k for the
    running sums A_k, B_k, so the outputs sum to n · product(mean a, mean b)."""

    def __init__(self, clock: Clock):
        super().__init__(clock)
        self.register_memory("acc_a", None)
        self.register_memory("acc_b", None)

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def single_step_forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.acc_a = a if self.acc_a is None else self.acc_a + a
        self.acc_b = b if self.acc_b is None else self.acc_b + b
        n = max(self.clock.driven, 1)
        return self._emit(self.product(self.acc_a, self.acc_b) / n)

    def forward(self, a, b):  # two inputs: bypass MemoryModule's single-input dispatch
        return self.single_step_forward(a, b)


class SpikeMatMul(_Bilinear):
    """Spike-equivalent ``a @ b`` of two spiking operands: R_k = A_k @ B_k / n_k."""

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class SpikeMul(_Bilinear):
    """Spike-equivalent elementwise ``a * b`` of two spiking operands (a squeeze-excitation gate,
    a GLU / SwiGLU product): R_k = A_k * B_k / n_k, the same bilinear running rule as
    :class:`SpikeMatMul`, so the outputs sum to n · (mean a) * (mean b)."""

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class ECSoftmax(_RunningOp):
    """Expectation-compensated softmax: R_k = n_k · softmax(X_k / n_k) for the running input X_k."""

    def __init__(self, dim: int, clock: Clock):
        super().__init__(clock)
        self.dim = dim
        self.register_memory("acc", None)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acc = x if self.acc is None else self.acc + x
        n = max(self.clock.driven, 1)
        return self._emit(n * torch.softmax(self.acc / n, dim=self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SpikeAttention(nn.Module):
    """Spike-equivalent ``F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)`` of
    three spiking operands: the running-sum product q·kᵀ, the scale, the mask, the
    expectation-compensated softmax and the running-sum product with v (Huang et al., "ECMT",
    2024; You et al., "SpikeZIP-TF", ICML 2024).  A constant mask -- added (float) or keeping
    positions (bool), or the causal mask -- enters on drive steps only, like a bias: the softmax's
    running input then holds n × (mean scores + mask), so masked positions stay at −inf.  Its
    three stateful parts are modules of their own, so the energy meter counts each as it counts
    an explicit attention."""

    def __init__(self, clock: Clock, scale: float | None = None, is_causal: bool = False):
        super().__init__()
        self.clock, self.scale, self.is_causal = clock, scale, bool(is_causal)
        self.qk, self.softmax, self.av = SpikeMatMul(clock), ECSoftmax(-1, clock), SpikeMatMul(clock)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None):
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        s = self.qk(q, k.transpose(-2, -1)) * scale
        if self.clock.drive:
            if attn_mask is not None:
                s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
            if self.is_causal:
                keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
                s = s.masked_fill(~keep, float("-inf"))
        return self.av(self.softmax(s), v)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, is_causal={self.is_causal}"


class SpikeMultiheadAttention(nn.Module):
    """Spike-equivalent ``nn.MultiheadAttention`` (torchvision's ViT): its input projections and
    its output projection as Linear layers whose biases are injected on drive steps only
    (:class:`DriveGate`), and the attention between them a :class:`SpikeAttention`.  Returns
    ``(output, None)``: the attention weights of a spiking run are not what the ANN averages, so
    a model that reads them is refused at conversion.  Masks and ``is_causal`` pass to the
    attention (a constant mask, on drive steps)."""

    def __init__(self, mha: nn.MultiheadAttention, clock: Clock):
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("MultiheadAttention with add_bias_kv or add_zero_attn has no spiking form here")
        e = mha.embed_dim
        weights = ((mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e], mha.in_proj_weight[2 * e:])
                   if mha._qkv_same_embed_dim else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        biases = (mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None))
        self.q, self.k, self.v = (self._linear(w, b, clock) for w, b in zip(weights, biases))
        self.out = self._linear(mha.out_proj.weight, mha.out_proj.bias, clock)
        self.heads, self.batch_first, self.clock = mha.num_heads, mha.batch_first, clock
        self.attention = SpikeAttention(clock)

    @staticmethod
    def _linear(weight: torch.Tensor, bias: torch.Tensor | None, clock: Clock) -> nn.Module:
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
        return DriveGate(lin, clock) if bias is not None else lin

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, E] -> [B, heads, L, E / heads]
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        mask = None  # additive, as scaled_dot_product_attention takes a float mask
        for m, shape in ((attn_mask, None), (key_padding_mask, (-1, 1, 1, k.shape[2]))):
            if m is None:
                continue
            if m.dtype == torch.bool:  # nn.MultiheadAttention's True: not allowed
                m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
            m = m.reshape(shape) if shape else m
            mask = m if mask is None else mask + m
        self.attention.is_causal = bool(is_causal)
        o = self.attention(q, k, v, mask)
        o = self.out(o.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1))
        return (o if self.batch_first else o.transpose(0, 1)), None


class DriveGate(nn.Module):
    """Wraps a Linear/Conv/ConvTranspose so that its bias is injected only on drive steps of the clock.

    With BatchNorm folded into the bias, zero-drive ("extra") steps then inject no current at all.
    """

    def __init__(self, layer: nn.Module, clock: Clock):
        super().__init__()
        self.layer, self.clock = layer, clock

    @property
    def weight(self) -> torch.Tensor:  # the wrapped layer's, for code that reads `layer.weight` itself
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        bias = layer.bias if self.clock.drive else None
        if isinstance(layer, nn.Linear):
            return F.linear(x, layer.weight, bias)
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(layer.kernel_size) - 1]
            return fn(x, layer.weight, bias, layer.stride, layer.padding, layer.output_padding, layer.groups,
                      layer.dilation)
        return layer._conv_forward(x, layer.weight, bias)


class DriveEmbedding(nn.Module):
    """A token embedding read on drive steps only: the lookup ``W[ids]`` is the network's analog
    input, fed like an image on each of the t drive steps and absent (zero) on the extra steps.

    An embedding is a product of a one-hot token with a weight matrix, so on drive steps it is a
    synapse whose input is the token; the simulator feeds zeros after the drive steps, which as
    token ids would be token 0, so the gate -- not the ids -- decides that nothing arrives then.
    ``lookup(ids)`` is the original operation (an ``nn.Embedding`` or a partial ``F.embedding``)."""

    def __init__(self, lookup, clock: Clock):
        super().__init__()
        self.lookup, self.clock = lookup, clock

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self.lookup, "weight", None)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.lookup(*args, **kwargs)
        return out if self.clock.drive else torch.zeros_like(out)


class SpikeEinsum(_Bilinear):
    """Spike-equivalent ``torch.einsum(equation, a, b)`` of two spiking operands (bilinear, like
    :class:`SpikeMatMul`): R_k = einsum(A_k, B_k) / n_k."""

    def __init__(self, equation: str, clock: Clock):
        super().__init__(clock)
        self.equation = equation

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, a, b)

    def extra_repr(self) -> str:
        return f"equation={self.equation!r}"


class DriveConst(nn.Module):
    """A constant (a tensor or a number) added into a spiking path, injected only on drive steps:
    the position embedding or class token of a ViT, a constant shift.  Like a bias, it must arrive
    once per input step, so that the run's mean carries it exactly once."""

    def __init__(self, clock: Clock, value: float | None = None):
        super().__init__()
        self.clock, self.value = clock, value

    def forward(self, c=None):
        c = self.value if c is None else c
        if self.clock.drive:
            return c
        return torch.zeros_like(c) if isinstance(c, torch.Tensor) else type(c)(0)  # not 0·c: c may be ±inf

    def extra_repr(self) -> str:
        return "" if self.value is None else f"value={self.value!r}"


class DriveFill(nn.Module):
    """An operation that writes a constant ``value`` into a spiking tensor -- ``F.pad`` with a
    non-zero value, ``masked_fill`` with a constant mask -- writing it on drive steps only and 0
    on the others, so that the run's mean holds the value once, as for a bias.  ``fn(*args,
    value=...)`` is the operation (a −inf fill before a softmax stays −inf in its running sum)."""

    def __init__(self, fn, value: float, clock: Clock, name: str = ""):
        super().__init__()
        self.fn, self.value, self.clock, self.name = fn, value, clock, name or getattr(fn, "__name__", "fill")

    def forward(self, *args, **kwargs):
        return self.fn(*args, value=self.value if self.clock.drive else 0.0, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.name}, value={self.value!r}"


class GatedBatchNorm(nn.Module):
    """An eval-mode BatchNorm that could not be folded into a preceding layer (it follows an add,
    a pool, or the input): ``x·s + b`` per channel (axis 1) with s = γ/√(var + ε) and
    b = β − mean·s, its shift b injected only on drive steps, like a folded bias."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, clock: Clock):
        super().__init__()
        scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale + (bn.bias.detach() if bn.affine else 0.0)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.scale.view(shape)
        return y + self.shift.view(shape) if self.clock.drive else y


class RunningFunction(_RunningOp):
    """Spike-equivalent f for any elementwise or row-wise function of one spiking operand:
    R_k = n_k · f(X_k / n_k) for the running input sum X_k and n_k drive steps (the rule of
    :class:`ECSoftmax`; Huang et al., "ECMT", 2024, for expectation compensation).

    The outputs sum to n · f(mean input), so once the input has settled the run's mean is f of the
    ANN's value: exact for LayerNorm, RMSNorm and GroupNorm (row-wise), GELU, SiLU, sigmoid,
    tanh and the like (elementwise).  ``fn`` is called as ``fn(X_k / n_k, *args, **kwargs)``
    with the node's other, constant arguments (a LayerNorm's weight and bias, GELU's
    ``approximate``).  It is a float operation on every step: the price of a non-linearity that
    spikes cannot carry; its output is real-valued, so the layer that reads it pays MACs.
    """

    def __init__(self, fn, clock: Clock, name: str = ""):
        super().__init__(clock)
        self.fn = fn  # an nn.Module (kept as a sub-module, so .to() moves its parameters) or a function
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.register_memory("acc", None)

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.acc = x if self.acc is None else self.acc + x
        n = max(self.clock.driven, 1)
        return self._emit(n * self.fn(self.acc / n, *args, **kwargs))

    def forward(self, x, *args, **kwargs):  # several inputs: bypass MemoryModule's dispatch
        return self.single_step_forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"f={self.name}"
