"""Typed results of the measuring functions: what :func:`~ann2snn.metrics.evaluate`,
:func:`~ann2snn.metrics.evaluate_ann`, :func:`~ann2snn.metrics.evaluate_snn`,
:func:`~ann2snn.metrics.evaluate_table`, :func:`~ann2snn.verify.verify` and
:func:`~ann2snn.frontier.frontier` return.

Each is a dataclass read by attribute (``res.k_step.top1``: a mistyped name fails loudly instead
of counting zero) and turned into plain data at the edge by ``to_dict()``, which gives exactly the
dict these functions returned before they were typed, so every JSON, CSV and Markdown file keeps
its keys (timm's ``validate.py`` writes its results the same way: records → CSV / JSON).
``from_dict`` reads such a dict back (a saved ``table.json`` row, a ``frontier.json``).

Code written for the dicts keeps working: ``res["k_step"]["top1"]`` reads ``res.to_dict()``, so
a nested value comes back in its plain-dict form.  A :class:`Table` is also a read-only mapping
of its rows by t (``table[4].top1``, ``sorted(table)``).

Pure data, no torch: the application formats these without loading the simulator.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator


def _plain(value: Any) -> Any:
    """``value`` with every result inside it turned into its dict (lists and dicts walked)."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Result:
    """What every result type shares: ``to_dict()``, ``from_dict()`` and reading by key.

    ``_KEYS`` maps an attribute to its key in the dict where the two differ (one name per concept
    in Python, the files' keys unchanged); ``_NESTED`` names the result type of a nested field
    (a list field holds a list of them); ``_OPTIONAL_KEYS`` are left out of the dict when None."""

    _KEYS: ClassVar[dict[str, str]] = {}
    _NESTED: ClassVar[dict[str, type]] = {}
    _OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ()
    __iter__ = None  # not a sequence: reading by key must not fall back to iteration by index

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL_KEYS:
                continue
            out[self._KEYS.get(f.name, f.name)] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The result whose ``to_dict()`` is ``data`` (keys it does not know are ignored)."""
        kwargs = {}
        for f in fields(cls):
            key = cls._KEYS.get(f.name, f.name)
            if key not in data:
                continue
            value, sub = data[key], cls._NESTED.get(f.name)
            if sub is not None and value is not None:
                value = [sub.from_dict(v) for v in value] if isinstance(value, list) else sub.from_dict(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def __getitem__(self, key: str) -> Any:
        """``res[key]``: the value under ``key`` in ``to_dict()`` (for code written for the dicts)."""
        return self.to_dict()[key]


# --------------------------------------------------------------------------------------------
# evaluation (ann2snn.metrics)
@dataclass
class Accuracy(Result):
    """Top-1 / top-5 (percent) and mean cross-entropy of an ANN over a loader; ``n`` samples
    (None inside an :class:`Evaluation`, whose ``n`` is its own)."""

    top1: float
    top5: float
    loss: float
    n: int | None = None
    _OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("n",)


@dataclass
class WithinRun(Result):
    """The figures after each step s = 1..S of one t-step run (S = t + extra_t): top-1 / top-5
    of the cumulative output, the loss of its running mean, and the spike-step budget s × bits."""

    steps: list[int]
    bit_steps: list[float]
    top1: list[float]
    top5: list[float]
    loss: list[float]


@dataclass
class KStep(Result):
    """The k-step runs k = 1..t, each a run of its own (input for k steps, thresholds set for k),
    after its extra_t zero steps (``top1`` …) and without them (``top1_no_extra`` …)."""

    k: list[int]
    total_steps: list[int]
    bit_steps: list[float]
    top1: list[float]
    top1_no_extra: list[float]
    top5: list[float]
    top5_no_extra: list[float]
    loss: list[float]
    loss_no_extra: list[float]


@dataclass
class Latency(Result):
    """The effective latency (:func:`ann2snn.metrics.effective_latency`): ``steps`` is None when
    the predictions had not settled within the ``observed_steps``."""

    steps: int | None
    settled: bool
    observed_steps: int
    fraction: float
    unsettled_fraction: float

    def text(self) -> str:
        """One phrase for a listing."""
        if self.settled:
            return (f"effective latency {self.steps} of {self.observed_steps} steps (predictions of "
                    f"≥ {self.fraction:.1%} of samples final)")
        return (f"effective latency: not settled within {self.observed_steps} steps "
                f"({self.unsettled_fraction:.1%} of samples still changed at the last step; "
                "observe more steps with --latency-extra N)")


@dataclass
class Evaluation(Result):
    """Everything :func:`ann2snn.metrics.evaluate` reports, in one loop over a loader."""

    n: int
    ann: Accuracy | None
    k_step: KStep | None
    k_step_is_prefix: bool
    spike_levels: int
    bits_per_step: float
    within_run: WithinRun
    effective_latency: Latency
    _NESTED: ClassVar[dict[str, type]] = {"ann": Accuracy, "k_step": KStep, "within_run": WithinRun,
                                          "effective_latency": Latency}


@dataclass
class SnnSteps(Result):
    """:func:`ann2snn.metrics.evaluate_snn`: the within-run figures of one t-step run."""

    t: int
    extra_t: int
    steps: list[int]
    bit_steps: list[float]
    top1: list[float]
    top5: list[float]
    loss: list[float]


@dataclass
class TableRow(Result):
    """Row t of a table: columns ``cols`` = t + extra_t for extra_t = 0..max, each a t-step run
    after extra_t zero steps, its sum divided by t."""

    cols: list[int]
    bit_steps: list[float]
    top1: list[float]
    top5: list[float]
    loss: list[float]


@dataclass
class Table(Result):
    """The t × (t + extra_t) table of :func:`ann2snn.metrics.evaluate_table`: its rows by t.
    A read-only mapping of them too (``table[t]``, ``sorted(table)``, ``table.items()``)."""

    rows: dict[int, TableRow] = field(default_factory=dict)

    def to_dict(self) -> dict[int, dict[str, Any]]:
        return {t: row.to_dict() for t, row in self.rows.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Table":
        """From ``to_dict()``'s form; the keys may be strings (``table.json`` holds ``"4"``)."""
        return cls({int(t): TableRow.from_dict(row) for t, row in data.items()})

    def __getitem__(self, t: int) -> TableRow:
        return self.rows[t]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def items(self):
        return self.rows.items()


# --------------------------------------------------------------------------------------------
# ann2snn.verify
@dataclass
class VerifyResult(Result):
    """:func:`ann2snn.verify.verify`: how far the quiescent SNN's output mean is from the quantized
    ANN's logits (``max_abs_diff``, against the logit ``scale``), and whether that is within
    ``tolerance`` · max(1, scale) once quiescent (``ok``)."""

    max_abs_diff: float
    scale: float
    tolerance: float
    ok: bool
    t: int
    settle_steps: int
    quiescent: bool
    steps_run: int
    spike_levels: int
    dtype: str
    leaf: str | None


# --------------------------------------------------------------------------------------------
# ann2snn.frontier
@dataclass
class FrontierPoint(Result):
    """One point of the frontier: spike levels m, t input steps and extra_t zero steps (T = steps),
    its accuracy and its energy per image."""

    spike_levels: int
    t: int
    extra_t: int
    steps: int
    bits_per_step: float
    bit_steps: float
    top1: float
    top5: float
    delta_top1: float
    e_snn_mj: float
    e_ann_mj: float
    ann_snn_ratio: float
    non_spike_share: float
    mean_rate: float
    sops: float
    pareto: bool = False
    # the second energy model (ann2snn.energy.hardware): the SNN and its equal-bit QNN with memory
    e_snn_memory_mj: float | None = None
    e_qnn_mj: float | None = None
    qnn_snn_ratio: float | None = None
    spikes_per_synapse: float | None = None
    break_even_rate: float | None = None  # spikes per synapse and step at which E_SNN = E_QNN (None: none)
    loss: float | None = None  # the mean cross-entropy (nats; per token for a language model: exp(loss) is its perplexity)


@dataclass
class Frontier(Result):
    """:func:`ann2snn.frontier.frontier`: the points for every spike level, row and helpful
    extra_t.  In the dict (and ``frontier.json``) ``spike_levels`` is ``"levels"`` and ``extra_t``
    is ``"extra"``, as before."""

    ann: Accuracy
    L: int
    spike_levels: list[int]
    rows: list[int]
    extra_t: int
    points: list[FrontierPoint]
    energy_images: int
    constants: str
    first_layer: str
    _KEYS: ClassVar[dict[str, str]] = {"spike_levels": "levels", "extra_t": "extra"}
    _NESTED: ClassVar[dict[str, type]] = {"ann": Accuracy, "points": FrontierPoint}


# --------------------------------------------------------------------------------------------
# generation (ann2snn.generate)
@dataclass
class Generation(Result):
    """:func:`ann2snn.generate.generate`: greedy continuations of each prompt by the quantized ANN
    and by its SNN, token ids per prompt, whether they are identical and, per prompt, the first
    generated position where they differ (None: identical); the SNN's steps per token (t +
    extra_t) and the wall time per generated token of each."""

    prompts: list[list[int]]
    qann: list[list[int]]
    snn: list[list[int]]
    identical: bool
    first_difference: list[int | None]
    t: int
    extra_t: int
    spike_levels: int
    steps_per_token: int
    seconds_per_token_qann: float
    seconds_per_token_snn: float


__all__ = ["Accuracy", "Evaluation", "Frontier", "FrontierPoint", "Generation", "KStep", "Latency", "Result", "SnnSteps", "Table",
           "TableRow", "VerifyResult", "WithinRun"]
