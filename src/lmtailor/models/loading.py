"""Loading a resolved model and its tokenizer with the right dtype and device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtailor.errors import ModelError
from lmtailor.models.catalog import ResolvedModel, resolve


def use_given_threads() -> None:
    """Torch uses the cores this process was given (OMP_NUM_THREADS): two processes fighting over OpenMP threads
    crawl. Called by heavy CLI commands, job processes and training ranks."""
    import os

    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


# Used only when a model ships no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def best_dtype(device: str | None = None):
    """bf16 on GPUs and CPUs that compute it natively (AVX512-BF16 / AMX), else fp32."""
    import torch

    device = device or best_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return torch.float32


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(ref: str | ResolvedModel, home: str | Path | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    model = ref if isinstance(ref, ResolvedModel) else resolve(ref, home)
    try:
        tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {model.ref} ({model.path}): {e}") from e
    if not tok.chat_template:  # trains and chats in ChatML; what the base itself answers in it means little
        tok.chat_template = CHATML_TEMPLATE
        tok.lmtailor_template_fallback = True
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    ref: str | ResolvedModel,
    home: str | Path | None = None,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
):
    """An AutoModelForCausalLM from a local folder (safetensors only: no pickle weights are ever loaded).

    `device_map="auto"` spreads a model over every visible GPU (accelerate) instead of moving it to one device."""
    from transformers import AutoModelForCausalLM

    model = ref if isinstance(ref, ResolvedModel) else resolve(ref, home)
    device = device or best_device()
    try:
        m = AutoModelForCausalLM.from_pretrained(
            model.path,
            dtype=dtype or best_dtype(device),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **({"device_map": device_map} if device_map else {}),
        )
    except Exception as e:
        raise ModelError(f"cannot load {model.ref} ({model.path}): {e}") from e
    return m if device_map else m.to(device)


def describe(ref: str, home: str | Path | None = None) -> dict[str, Any]:
    """Architecture, parameters, context length, chat template and location, read without loading weights."""
    model = resolve(ref, home)
    config = json.loads((model.path / "config.json").read_text(encoding="utf-8"))
    return {
        "name": ref,
        "source": model.source,
        "path": str(model.path),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "parameters": _count_parameters(model.path),
        "context_length": config.get("max_position_embeddings"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "chat_template": _has_chat_template(model.path),
        "card": model.card,
    }


def _count_parameters(path: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(f, "pt") as st:
            for k in st.keys():
                total += _prod(st.get_slice(k).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").exists():
        return True
    cfg = path / "tokenizer_config.json"
    return cfg.exists() and "chat_template" in json.loads(cfg.read_text(encoding="utf-8"))
