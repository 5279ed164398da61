"""Language models through the CLI (issue 21): the embedded corpus, training with next-token
cross-entropy, convert / table / generate with per-token perplexity, and the errors."""
import json
import math

import pytest
import torch

from helpers import assert_user_error, run_cli, write_yaml

import ann2snn
from ann2snn.app.config import Config
from ann2snn.app.text import TokenWindows, build_python_docs, build_text, decode, encode, python_docs_text
from ann2snn.app.data import DataError
from ann2snn.models import create_model
from ann2snn.simulate import Simulator

LM = {"data": "python_docs", "model": "gpt", "context": 16, "dim": 16, "num_heads": 2, "depth": 1, "mlp_ratio": 2.0,
      "bs": 16, "epochs": 1, "train_subset": 64, "test_subset": 8, "t": 4, "extra_t": 4, "l": 4,
      "placement": "synapses", "device": "cpu", "use_amp": False, "lambda_init": 1.0, "calibrate_batches": 2,
      "lr": 3e-3}


def test_the_embedded_corpus_is_english_text_of_known_size():
    text = python_docs_text()
    from pydoc_data import topics

    keys = sorted(topics.topics)
    assert len(text) > 400_000 and len(keys) > 50
    assert text.startswith(topics.topics[keys[0]]) and text.endswith(topics.topics[keys[-1]])  # sorted, joined
    assert len(text) == sum(len(topics.topics[k]) for k in keys) + 2 * (len(keys) - 1)
    train, test, info = build_python_docs(Config(context=64))
    assert info.is_text and info.context == 64 and info.num_classes == 256
    x, y = train[3]
    assert x.dtype == torch.long and x.shape == (64,) and torch.equal(x[1:], y[:-1])  # targets: shifted by one
    assert len(train) > 8 * len(test) > 0


def test_bytes_round_trip_and_windows():
    assert encode("").numel() == 0 and decode(encode("")) == ""
    ids = encode("héllo wörld")
    assert decode(ids) == "héllo wörld"
    w = TokenWindows(ids, 4)
    assert len(w) == (len(ids) - 1) // 4
    with pytest.raises(IndexError):
        w[len(w)]


def test_text_folder_and_its_errors(tmp_path):
    (tmp_path / "a.txt").write_text("abc " * 200)
    (tmp_path / "b.txt").write_text("xyz " * 200)
    train, test, info = build_text(Config(data="text", data_dir=str(tmp_path), context=8))
    assert len(train) > len(test) > 0
    with pytest.raises(DataError, match="no such file or folder"):
        build_text(Config(data="text", data_dir=str(tmp_path / "missing"), context=8))
    with pytest.raises(DataError, match="data_dir"):
        build_text(Config(data="text", context=8))
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "s.txt").write_text("too short")
    with pytest.raises(DataError, match="too short"):
        build_text(Config(data="text", data_dir=str(tmp_path / "short"), context=8))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="too short"):
        build_text(Config(data="text", data_dir=str(tmp_path / "empty.txt"), context=8))


def _run(capsys, argv) -> tuple[int, str]:
    """(exit status, stdout) of ``ann2snn ARGV`` in this process."""
    from ann2snn.app import cli

    rc = cli.main([str(a) for a in argv])
    out, _ = capsys.readouterr()
    return rc, out


@pytest.mark.slow
def test_train_convert_table_generate_end_to_end(capsys, tmp_path):
    cfg = write_yaml(tmp_path / "lm.yml", {**LM, "id": "lm", "out_root": str(tmp_path)})
    rc, err = run_cli(capsys, ["train", "-c", cfg])
    assert rc == 0, err
    rc, out = _run(capsys, ["convert", "-c", cfg, "--verify", "--json", tmp_path / "c.json"])
    assert rc == 0
    assert "perplexity" in out and "energy per scored token" in out and "verify" in out and ": OK;" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    ann_ppl = doc["ann"]["perplexity"]
    assert math.isclose(ann_ppl, math.exp(doc["ann"]["loss"]), rel_tol=1e-9)
    assert 1 < ann_ppl < 256  # a trained byte model is better than uniform
    assert doc["tokens_per_sample"] == 16 and doc["n"] == 8 * 16  # every token of every test window counts
    # after t + extra_t steps at t = L the SNN has settled on its QANN: the same perplexity
    assert math.isclose(doc["snn"]["k_step"]["perplexity"][-1], ann_ppl, rel_tol=1e-4)
    assert doc["energy_per_token"]["e_snn_mj"] > 0
    rc, _ = run_cli(capsys, ["table", "-c", cfg, "--t", "1-4", "--extra-t", "0-4"])
    assert rc == 0
    md = (tmp_path / "lm" / "table-best_model-exact" / "table.md").read_text()
    assert "SNN perplexity" in md and "next-token top-1" in md
    tj = json.loads((tmp_path / "lm" / "table-best_model-exact" / "table.json").read_text())
    assert math.isclose(tj["rows"]["4"]["perplexity"][-1], math.exp(tj["rows"]["4"]["loss"][-1]))
    rc, out = _run(capsys, ["energy", "-c", cfg, "--max-batches", "1"])
    assert rc == 0 and "per token (16 per sample)" in out
    rc, _ = _run(capsys, ["frontier", "-c", cfg, "--spike-levels", "1,L", "--t", "1,4", "--extra-t", "0-2",
                          "--energy-batches", "1"])
    assert rc == 0
    front = (tmp_path / "lm" / "frontier-best_model-exact" / "frontier.md").read_text()
    assert "QANN perplexity" in front and "E_SNN/token" in front and "of the QANN's perplexity" in front
    assert "test windows" in front and "test images" not in front
    rc, out = _run(capsys, ["generate", "-c", cfg, "--prompt", "The ", "--test-prompts", "2", "--max-new-tokens", "4",
                            "--json", tmp_path / "g.json"])
    assert rc == 0 and "QANN:" in out and "SNN:" in out and "time per generated token" in out
    gen = json.loads((tmp_path / "g.json").read_text())
    assert sum(len(r["prompts"]) for r in gen["results"]) == 3
    assert all(len(seq) == 4 for r in gen["results"] for seq in r["snn"])
    assert [t["prompt"] for t in gen["texts"]][0] == "The "  # in the order given, as text
    lines = [ln for ln in out.splitlines() if ln.startswith("prompt ")]
    assert lines[0] == "prompt 1: 'The '" and len(lines) == 3
    rc, err = run_cli(capsys, ["generate", "-c", cfg, "--prompt", ""])
    assert_user_error(rc, err, "generate", "--prompt is empty")
    rc, err = run_cli(capsys, ["generate", "-c", cfg, "--prompt", "a", "--max-new-tokens", "0"])
    assert rc == 2 and "must be between 1 and" in err and "Traceback" not in err


@pytest.mark.parametrize("overrides, command, words", [
    ({"model": "gpt", "data": "digits"}, "train", ["language model", "--data python_docs"]),
    ({"model": "transformer", "data": "python_docs"}, "train", ["is text", "--model gpt"]),
    ({"data": "text"}, "train", ["data_dir"]),
    ({"mixup": 0.8}, "train", ["mixup"]),
    ({"context": 1}, "train", ["context (tokens per window) must be between 2"]),
    ({"attn": "ssa"}, "train", ["attn applies to the `transformer` and `vit` models only"]),
])
def test_language_model_mistakes_are_user_errors(capsys, tmp_path, overrides, command, words):
    cfg = write_yaml(tmp_path / "c.yml", {**LM, **overrides, "out_root": str(tmp_path)})
    rc, err = run_cli(capsys, [command, "-c", cfg])
    assert_user_error(rc, err, command, *words)


def test_generate_api_compares_qann_and_snn_greedy_tokens():
    torch.manual_seed(0)
    model = create_model("gpt", dim=16, num_heads=2, depth=1, context=8)
    ids = torch.randint(0, 256, (4, 8))
    q = ann2snn.quantize(model, levels=4, placement="synapses", example_input=ids, calibrate=[ids])
    sim = Simulator(ann2snn.convert(q, example_input=ids))
    res = ann2snn.generate(q, sim, ids[:2, :5], max_new_tokens=6, t=4, extra_t=8)
    assert len(res.qann) == 2 and all(len(s) == 6 for s in res.qann + res.snn)
    # the QANN's greedy tokens are its own argmaxes: check the first one by hand
    x = torch.zeros(2, 8, dtype=torch.long)
    x[:, :5] = ids[:2, :5]
    assert res.qann[0][0] == int(q(x)[0, 4].argmax())
    assert res.identical == all(a == b for a, b in zip(res.qann, res.snn))
    with pytest.raises(ValueError, match="max_new_tokens"):
        ann2snn.generate(q, sim, ids[:1], max_new_tokens=0, t=4)
    with pytest.raises(ValueError, match="converted for windows of 8 tokens"):
        ann2snn.generate(q, sim, ids[:1], max_new_tokens=1, t=4, context=16)
    with pytest.raises(ValueError, match="vocabulary"):
        ann2snn.generate(q, sim, [[1, 300]], max_new_tokens=1, t=4)
    with pytest.raises(TypeError, match="integer token ids"):
        ann2snn.generate(q, sim, [1.5, 2.0], max_new_tokens=1, t=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hf:gpt2", "hf:llama"])
def test_hf_models_train_and_convert_through_the_cli(capsys, tmp_path, name):
    pytest.importorskip("transformers")
    cfg = write_yaml(tmp_path / "hf.yml", {**LM, "model": name, "id": "hf", "out_root": str(tmp_path)})
    rc, err = run_cli(capsys, ["train", "-c", cfg])
    assert rc == 0, err
    rc, out = _run(capsys, ["convert", "-c", cfg, "--verify"])
    assert rc == 0 and ": OK;" in out and "perplexity" in out


def test_hf_checkpoint_folder_as_pretrained(capsys, tmp_path):
    pytest.importorskip("transformers")
    model = create_model("hf:qwen2", dim=16, num_heads=2, depth=1, context=16)
    model.lm.save_pretrained(tmp_path / "ckpt")
    cfg = write_yaml(tmp_path / "hf.yml", {**LM, "model": "hf:qwen2", "id": "p", "out_root": str(tmp_path),
                                           "pretrained": str(tmp_path / "ckpt"), "train_subset": 16})
    rc, err = run_cli(capsys, ["train", "-c", cfg])
    assert rc == 0, err
    bad = write_yaml(tmp_path / "bad.yml", {**LM, "model": "hf:qwen2", "out_root": str(tmp_path),
                                            "pretrained": str(tmp_path / "missing")})
    rc, err = run_cli(capsys, ["train", "-c", bad])
    assert_user_error(rc, err, "train", "not a folder holding a transformers checkpoint")
    wrong = write_yaml(tmp_path / "wrong.yml", {**LM, "model": "hf:llama", "out_root": str(tmp_path),
                                                "pretrained": str(tmp_path / "ckpt")})
    rc, err = run_cli(capsys, ["train", "-c", wrong])
    assert_user_error(rc, err, "train", "is a 'qwen2', not a 'llama'")


def test_frontier_picks_extra_steps_by_perplexity_for_language_models():
    from ann2snn.frontier import frontier, helpful_extra_t

    loss = [1.30, 1.2101, 1.2100, 1.2100]  # the best loss first at e = 2 (to 1e-4 nats)
    assert helpful_extra_t([-v for v in loss], digits=4) == [0, 2]
    assert helpful_extra_t([50.0, 50.004, 50.001]) == [0]  # top-1 to 0.01: no extra step helps
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (4, 8))
    q = ann2snn.quantize(create_model("gpt", dim=16, num_heads=2, depth=1, context=8), levels=2,
                         example_input=ids, calibrate=[ids])
    sim = Simulator(ann2snn.convert(q, example_input=ids))
    with pytest.raises(ValueError, match="by must be"):
        frontier(q, sim, [(ids, ids)], by="perplexity")
    res = frontier(q, sim, [(ids, ids)], spike_levels=[1], rows=[2], extra_t=2, energy_batches=1, by="loss")
    assert res.points and all(p.loss is not None for p in res.points)


@pytest.mark.slow
def test_the_language_model_example_runs_and_verifies():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "examples/language_model.py", "--quick"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(OK, settled after" in proc.stdout and "SNN t = 8: perplexity" in proc.stdout and "identical" in proc.stdout
