"""What the benchmarks share: writing one benchmark's section of benchmarks/RESULTS.md between its
HTML-comment markers, and loading a trained run for evaluation."""
from __future__ import annotations

from pathlib import Path

from ann2snn.app.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_marked(name: str, md: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (both part of
    ``md``) in RESULTS.md, or append ``md`` when the section is not there yet."""
    start, end = markers(name)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        rest = text[text.index(end) + len(end):].lstrip("\n")
        text = text[:text.index(start)] + md.strip() + "\n" + ("\n" + rest if rest else "")
    else:
        text = text.rstrip() + "\n\n" + md
    atomic_write_text(path, text)


def load_run(ckpt: Path, test_subset: int):
    """(config, model in eval mode, test loader) of a trained checkpoint, on its first ``test_subset``
    test images; the config is the one stored with the checkpoint."""
    from ann2snn.app.checkpoint import checkpoint_config, load_checkpoint
    from ann2snn.app.pipeline import load_trained
    from ann2snn.app.config import load_config

    stored = checkpoint_config(load_checkpoint(ckpt), ckpt)
    cfg = load_config(None, {**stored.to_dict(), "test_subset": test_subset})
    model, loader, _ = load_trained(cfg, ckpt)
    return cfg, model.eval(), loader
