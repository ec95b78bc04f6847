"""`lmtailor merge`: several tuned models of one base into one model, through mergekit.

    run_merge(spec)  resolve the models → refuse incompatible ones (architecture, shapes, vocabulary, base)
                     → a mergekit configuration → mergekit writes the weights into a temporary folder
                     → the tokenizer and chat template of the first model, a card naming the parents
                     → renamed into place (a crash leaves no half model)

The arithmetic is mergekit's (linear, task arithmetic, TIES, DARE, SLERP); what lmtailor adds is choosing
the base from the models' cards, the checks and the card.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lmtailor.errors import ModelError, SpecError
from lmtailor.home import atomic_write_json, home_dir
from lmtailor.specs import TASK_VECTOR_METHODS, MergeSpec

SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")  # fmt: skip


def run_merge(spec: MergeSpec, home=None, log: Callable[[str], None] = print) -> Path:
    from lmtailor.models.catalog import resolve

    for m in spec.models:
        folder = Path(m).expanduser()
        if (folder / "adapter").is_dir() and not (folder / "config.json").exists():
            raise SpecError(f"{m} holds only a LoRA adapter (trained with merge: false): merging needs the "
                            "merged weights; train it again with merge: true")  # fmt: skip
    parents = [resolve(m, home) for m in spec.models]
    folders = [str(p.path.resolve()) for p in parents]
    if len(set(folders)) < len(folders):
        twice = next(m for m, f in zip(spec.models, folders, strict=True) if folders.count(f) > 1)
        raise SpecError(f"{twice} is named twice: merging a model with itself changes nothing")
    configs = [_config(p.path) for p in parents]
    base = _base(spec, parents, home) if spec.method in TASK_VECTOR_METHODS else None
    _check_compatible(spec.models, configs, parents)
    if base is not None:
        _check_compatible([spec.models[0], f"base {base}"], [configs[0], _config(base)], parents[:1] + [None])
    name = spec.name or f"merged-{spec.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(spec.output).expanduser() if spec.output else home_dir(home) / "models" / name
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"{out} exists and is not empty: pick another --output")
    refs = [_weights_ref(p) for p in parents]
    config = _mergekit_config(spec, refs, base, configs[0])
    log(f"merging {len(refs)} models with {spec.method} into {out}")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        _mergekit(config, tmp, spec)
        for f in TOKENIZER_FILES:  # mergekit copies the base's tokenizer; the chat template is the parents'
            if (parents[0].path / f).exists():
                shutil.copy2(parents[0].path / f, tmp / f)
        atomic_write_json(tmp / "lmtailor.json", _card(spec, name, parents, base, config))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"merged model: {out}")
    return out


def _config(folder: Path) -> dict:
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{folder}: cannot read config.json: {e}") from e
    return cfg.get("text_config", cfg)


def _base(spec: MergeSpec, parents, home) -> Path:
    """The common base of task-vector methods: --base, else the base_path every card names."""
    from lmtailor.models.catalog import resolve

    if spec.base:
        return resolve(spec.base, home).path
    bases = {str(Path(p.card["base_path"]).resolve()) for p in parents if p.card and p.card.get("base_path")}
    missing = [
        m for m, p in zip(spec.models, parents, strict=True) if not (p.card and p.card.get("base_path"))
    ]
    if missing:
        raise SpecError(f"{spec.method} needs the models' common base: {missing[0]} has no lmtailor card "
                        "naming one; pass --base")  # fmt: skip
    if len(bases) > 1:
        raise SpecError(f"the models were tuned from different bases ({', '.join(sorted(bases))}): "
                        "task vectors of different bases cannot be added")  # fmt: skip
    return Path(bases.pop())


def _check_compatible(names: list[str], configs: list[dict], parents: list) -> None:
    first = configs[0]
    arch = (first.get("architectures") or [first.get("model_type")])[0]
    for name, cfg in zip(names[1:], configs[1:], strict=True):
        other = (cfg.get("architectures") or [cfg.get("model_type")])[0]
        if other != arch:
            raise SpecError(
                f"cannot merge {names[0]} ({arch}) with {name} ({other}): different architectures"
            )
        for key in SHAPE_KEYS:
            if cfg.get(key) != first.get(key):
                what = "vocabularies" if key == "vocab_size" else "shapes"
                raise SpecError(f"cannot merge {names[0]} with {name}: different {what} "
                                f"({key} {first.get(key)} vs {cfg.get(key)})")  # fmt: skip
    vocabs = {_vocab_hash(p.path) for p in parents if p is not None}
    vocabs.discard(None)
    if len(vocabs) > 1:
        raise SpecError(f"cannot merge {', '.join(names)}: their tokenizers differ (same size, other tokens)")


def _vocab_hash(folder: Path) -> str | None:
    import hashlib

    f = folder / "tokenizer.json"
    if not f.exists():
        return None
    vocab = json.loads(f.read_text(encoding="utf-8")).get("model", {}).get("vocab")
    return hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest() if vocab else None


def _weights_ref(parent) -> str:
    """What mergekit loads: the folder's full weights (not an adapter's file)."""
    folder = parent.path
    if any(f.name != "adapter_model.safetensors" for f in folder.glob("*.safetensors")):
        return str(folder)
    raise ModelError(f"{folder} holds no full weights to merge (no model*.safetensors)")


def _mergekit_config(spec: MergeSpec, refs: list[str], base: Path | None, config: dict) -> dict:
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    cfg: dict = {"merge_method": spec.method, "dtype": dtype, "out_dtype": dtype}
    if spec.method == "slerp":
        cfg.update(base_model=refs[0], models=[{"model": r} for r in refs], parameters={"t": spec.t})
        return cfg
    weights = spec.weights or [1.0 / len(refs) if spec.method == "linear" else 1.0] * len(refs)
    models = []
    for i, ref in enumerate(refs):
        params: dict = {"weight": weights[i]}
        if spec.method in ("ties", "dare_ties", "dare_linear"):
            params["density"] = spec.densities[i] if spec.densities else 0.5
        models.append({"model": ref, "parameters": params})
    cfg["models"] = models
    if base is not None:
        cfg["base_model"] = str(base)
    if spec.normalize is not None:
        cfg["parameters"] = {"normalize": spec.normalize}
    return cfg


def _mergekit(config: dict, out: Path, spec: MergeSpec) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_merge
    from mergekit.options import MergeOptions

    try:
        merge_config = MergeConfiguration.model_validate(config)
    except Exception as e:  # pydantic's message names the key
        raise SpecError(f"mergekit refused the configuration: {e}") from e
    options = MergeOptions(copy_tokenizer=True, random_seed=spec.seed, trust_remote_code=spec.trust_remote_code,
                           quiet=True, write_model_card=False, safe_serialization=True, lazy_unpickle=False)  # fmt: skip
    try:
        mergekit_merge(merge_config, str(out), options=options)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise ModelError(f"mergekit could not merge these models: {e}") from e


def _card(spec: MergeSpec, name: str, parents, base: Path | None, config: dict) -> dict:
    from lmtailor import __version__

    roots = {p.card.get("base_model") for p in parents if p.card} - {None}
    return {
        "lmtailor_version": __version__,
        "name": name,
        "base_model": roots.pop() if len(roots) == 1 else None,
        "base_path": str(base) if base else next((p.card.get("base_path") for p in parents if p.card), None),
        "parent": None,
        "parents": [str(p.path) for p in parents],
        "method": "merge",
        "strategy": "merge",
        "adapter": None,
        "merge": {
            "method": spec.method,
            "weights": spec.weights,
            "densities": spec.densities,
            "t": spec.t if spec.method == "slerp" else None,
            "base": str(base) if base else None,
            "mergekit": config,
        },  # fmt: skip
        "hyperparameters": {},
        "data": None,
        "metrics": {},
    }
