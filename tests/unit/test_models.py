"""Model references (folder, tuned name, catalog, hub id offline) and describe() read from the files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from lmtailor.errors import ModelError
from lmtailor.models.catalog import CATALOG, resolve
from lmtailor.models.loading import describe

# 49152 x 32 embedding (tied with lm_head) + 2 layers + final norm; see test_describe_counts_parameters_exactly.
LLAMA_PARAMS = 49152 * 32 + 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64 + 2 * 32) + 32
QWEN2_BIASES = 2 * (32 + 16 + 16)


def test_resolve_a_model_folder(tiny_llama_dir: Path) -> None:
    model = resolve(str(tiny_llama_dir))
    assert (model.ref, model.path, model.source, model.card) == (
        str(tiny_llama_dir),
        tiny_llama_dir,
        "folder",
        None,
    )


def test_resolve_a_tuned_model_by_name_in_the_home(tiny_llama_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    tuned = home / "models" / "my-bot"
    shutil.copytree(tiny_llama_dir, tuned)
    (tuned / "lmtailor.json").write_text(json.dumps({"name": "my-bot", "base_model": "x"}), encoding="utf-8")
    model = resolve("my-bot", home)
    assert (model.path, model.source, model.card) == (tuned, "tuned", {"name": "my-bot", "base_model": "x"})


def test_resolve_uses_lmtailor_home_from_the_environment(
    lmtailor_home: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = lmtailor_home / "models" / "env-bot"
    shutil.copytree(tiny_llama_dir, tuned)
    (tuned / "lmtailor.json").write_text("{}", encoding="utf-8")
    assert resolve("env-bot").path == tuned


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as e:
        resolve(str(tmp_path / "empty"))
    assert str(e.value) == f"{tmp_path / 'empty'} is not a model folder: it has no config.json"


@pytest.mark.parametrize("ref", ["./no-such-folder", "gpt-17-ultra", "/definitely/not/here"])
def test_unknown_reference_lists_the_catalog(ref: str) -> None:
    with pytest.raises(ModelError) as e:
        resolve(ref)
    message = str(e.value)
    assert message.startswith(f"unknown model {ref!r}: not a folder, a .gguf file, a tuned model in the home")
    assert message.endswith(", ".join(CATALOG))
    assert "smollm2-135m-instruct" in message and "qwen2.5-0.5b-instruct" in message


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        resolve(str(tmp_path / "model.gguf"))
    assert str(e.value) == f"GGUF file not found: {tmp_path / 'model.gguf'}"


@pytest.mark.parametrize(
    ("ref", "hub_id"),
    [("some-org/some-model", "some-org/some-model"), ("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct")],
)
def test_hub_model_offline_fails_at_once_saying_what_to_do(
    ref: str, hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # nothing cached
    t0 = time.monotonic()
    with pytest.raises(ModelError) as e:
        resolve(ref)
    assert time.monotonic() - t0 < 5
    message = str(e.value)
    assert message.startswith(f"{ref!r} is a Hugging Face hub model ({hub_id}), not in the local cache")
    assert f"huggingface-cli download {hub_id} --local-dir DIR" in message
    assert "pass `--model DIR`" in message


@pytest.mark.parametrize(
    ("arch", "architecture", "expected"),
    [("llama", "LlamaForCausalLM", LLAMA_PARAMS), ("qwen2", "Qwen2ForCausalLM", LLAMA_PARAMS + QWEN2_BIASES)],
)
def test_describe_counts_parameters_exactly(request, arch: str, architecture: str, expected: int) -> None:
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    info = describe(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) == expected
    assert info == {
        "name": str(folder),
        "source": "folder",
        "path": str(folder),
        "architecture": architecture,
        "parameters": expected,
        "context_length": 512,
        "layers": 2,
        "hidden_size": 32,
        "vocab_size": 49152,
        "chat_template": True,
        "card": None,
    }


def test_describe_a_folder_without_chat_template(tiny_llama_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama_dir / name, bare / name)
    info = describe(str(bare))
    assert (info["chat_template"], info["parameters"], info["context_length"]) == (False, LLAMA_PARAMS, 512)


def test_models_list_and_show_print_paths_whole_in_a_pipe(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmtailor.cli import app

    home = tmp_path / ("a-home-folder-with-a-long-name-" * 2)
    tuned = home / "models" / "my-bot"
    shutil.copytree(tiny_llama_dir, tuned)
    (tuned / "lmtailor.json").write_text(
        json.dumps({"strategy": "lora", "base_model": "x"}), encoding="utf-8"
    )
    # 80 columns: rich's width where the output is no terminal; the path alone is longer
    listed = CliRunner().invoke(app, ["models", "list", "--home", str(home)], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    assert any("my-bot" in line and str(tuned) in line for line in listed.output.splitlines()), listed.output
    shown = CliRunner().invoke(app, ["models", "show", "my-bot", "--home", str(home)], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and str(tuned) in shown.output, shown.output
