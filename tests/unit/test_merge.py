"""lmtailor merge over mergekit: identical inputs give the same weights, linear (1, 0) gives the first model,
TIES on crafted tensors gives the hand-computed result, incompatible models are refused in words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lmtailor.errors import LmtailorError
from lmtailor.merge.run import run_merge
from lmtailor.specs import MergeSpec

quiet = lambda *_: None  # noqa: E731


def variant(src: Path, dst: Path, change, base: Path | None = None) -> Path:
    """A copy of a model folder with its weights changed by change(name, tensor); a card naming `base`."""
    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    save_file({k: change(k, v).contiguous() for k, v in weights.items()}, dst / "model.safetensors")
    if base is not None:
        card = {"name": dst.name, "base_model": base.name, "base_path": str(base), "parent": None}
        (dst / "lmtailor.json").write_text(json.dumps(card), encoding="utf-8")
    return dst


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=k)


def test_merging_identical_models_returns_their_weights(tiny_llama_dir, tmp_path):
    a = variant(tiny_llama_dir, tmp_path / "a", lambda k, v: v + 0.01, base=tiny_llama_dir)
    b = variant(tiny_llama_dir, tmp_path / "b", lambda k, v: v + 0.01, base=tiny_llama_dir)
    for method in ("linear", "task_arithmetic", "slerp"):
        weights_kw = {"weights": [0.5, 0.5]} if method == "task_arithmetic" else {}
        out = run_merge(MergeSpec(models=[str(a), str(b)], method=method, output=str(tmp_path / method),
                                  **weights_kw), home=tmp_path / "home", log=quiet)  # fmt: skip
        assert_same(weights(out), weights(a))
        card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
        assert card["parents"] == [str(a), str(b)] and card["merge"]["method"] == method
        assert (out / "tokenizer.json").exists() and (out / "config.json").exists()


def test_linear_with_weights_one_and_zero_returns_the_first_model(tiny_llama_dir, tmp_path):
    a = variant(tiny_llama_dir, tmp_path / "a", lambda k, v: v * 1.5)
    b = variant(tiny_llama_dir, tmp_path / "b", lambda k, v: -v)
    out = run_merge(MergeSpec(models=[str(a), str(b)], method="linear", weights=[1, 0], output=str(tmp_path / "m")),
                    home=tmp_path / "home", log=quiet)  # fmt: skip
    assert_same(weights(out), weights(a))
    halves = run_merge(MergeSpec(models=[str(a), str(b)], method="linear", output=str(tmp_path / "h")),
                       home=tmp_path / "home", log=quiet)  # fmt: skip
    w, wa = weights(halves), weights(a)
    torch.testing.assert_close(
        w["model.norm.weight"], 0.25 * wa["model.norm.weight"] / 1.5, atol=1e-6, rtol=0
    )


def test_ties_on_crafted_tensors_gives_the_hand_computed_result(tiny_llama_dir, tmp_path):
    """One tensor with crafted task vectors; TIES at density 1: elect each entry's sign by the sum, average the
    entries that agree with it (normalised by their weights), add to the base."""
    key = "model.norm.weight"
    base = variant(tiny_llama_dir, tmp_path / "base", lambda k, v: torch.zeros_like(v) if k == key else v)
    size = weights(base)[key].numel()
    ta = torch.zeros(size)
    tb = torch.zeros(size)
    ta[:4] = torch.tensor([1.0, -2.0, 3.0, 0.5])
    tb[:4] = torch.tensor([2.0, 1.0, -1.0, -0.5])
    a = variant(base, tmp_path / "a", lambda k, v: ta.to(v.dtype) if k == key else v, base=base)
    b = variant(base, tmp_path / "b", lambda k, v: tb.to(v.dtype) if k == key else v, base=base)
    out = run_merge(MergeSpec(models=[str(a), str(b)], method="ties", densities=[1, 1], weights=[1, 1],
                              output=str(tmp_path / "ties")), home=tmp_path / "home", log=quiet)  # fmt: skip
    # sums [+3, -1, +2, 0] elect +, -, +, and + for the tie (mergekit's rule: a zero sum counts as +);
    # the entries that agree, averaged: (1+2)/2, -2/1, 3/1, 0.5/1
    expected = torch.zeros(size)
    expected[:4] = torch.tensor([1.5, -2.0, 3.0, 0.5])
    torch.testing.assert_close(weights(out)[key].float(), expected, atol=1e-6, rtol=0)
    others = {k: v for k, v in weights(out).items() if k != key}
    assert_same(others, {k: v for k, v in weights(base).items() if k != key})  # no change anywhere else


def test_incompatible_models_are_refused_with_the_reason(tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    a = variant(tiny_llama_dir, tmp_path / "a", lambda k, v: v, base=tiny_llama_dir)
    with pytest.raises(LmtailorError, match="different architectures"):
        run_merge(MergeSpec(models=[str(a), str(tiny_qwen2_dir)], method="linear"), home=tmp_path, log=quiet)
    other = variant(tiny_llama_dir, tmp_path / "other-base", lambda k, v: v + 1)
    c = variant(tiny_llama_dir, tmp_path / "c", lambda k, v: v, base=other)
    with pytest.raises(LmtailorError, match="different bases"):
        run_merge(MergeSpec(models=[str(a), str(c)], method="ties"), home=tmp_path, log=quiet)
    plain = variant(tiny_llama_dir, tmp_path / "plain", lambda k, v: v)
    with pytest.raises(LmtailorError, match="pass --base"):
        run_merge(MergeSpec(models=[str(a), str(plain)], method="task_arithmetic"), home=tmp_path, log=quiet)
    wide = tmp_path / "wide"
    shutil.copytree(tiny_llama_dir, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 8}))
    with pytest.raises(LmtailorError, match="different vocabularies"):
        run_merge(MergeSpec(models=[str(a), str(wide)], method="linear"), home=tmp_path, log=quiet)
    with pytest.raises(LmtailorError, match="named twice"):
        run_merge(MergeSpec(models=[str(a), str(a)], method="linear"), home=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="one per model"):
        MergeSpec(models=[str(a), str(plain)], weights=[1.0])
    lora_only = tmp_path / "lora-only"
    (lora_only / "adapter").mkdir(parents=True)
    with pytest.raises(LmtailorError, match="merge: true"):
        run_merge(MergeSpec(models=[str(a), str(lora_only)], method="linear"), home=tmp_path, log=quiet)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_merge_command_and_serving_the_result(tiny_llama_dir, tmp_path):
    from lmtailor.cli import app

    a = variant(tiny_llama_dir, tmp_path / "a", lambda k, v: v + 0.02, base=tiny_llama_dir)
    b = variant(tiny_llama_dir, tmp_path / "b", lambda k, v: v - 0.02, base=tiny_llama_dir)
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", "-m", str(a), "-m", str(b), "--method", "dare_ties", "--weight", "1",
                                      "--weight", "1", "--density", "0.9", "--density", "0.9", "-o", str(out),
                                      "--home", str(tmp_path / "home")])  # fmt: skip
    assert result.exit_code == 0, result.output
    from lmtailor.models.loading import describe, load_model

    assert describe(str(out))["source"] == "tuned"  # a card: servable and evaluable like any tuned model
    model = load_model(str(out), tmp_path / "home")
    assert (
        model.config.num_hidden_layers
        == json.loads((tiny_llama_dir / "config.json").read_text())["num_hidden_layers"]
    )
    bad = CliRunner().invoke(app, ["merge", "-m", str(a), "--method", "ties", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "models" in bad.output and "Traceback" not in bad.output
