"""WiSE-FT on a tuned model: its weights pulled back toward its base's (base + a x (tuned - base)), then the
held-out target metric and retention at each a, as bench/retention.py measures them. No training.

Written for the full-weight models lmtailor's rule makes (MLP blocks, full); a LoRA model's change is its
adapter's scale. Each interpolated model is saved beside the tuned one (DIR-aA) and evaluated with `run_eval`
(greedy, 96 new tokens) and `retention.measure`.

    python bench/wise_ft.py TUNED_DIR TEST.jsonl 0.85,0.7 [--home HOME]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tuned", type=Path)
    ap.add_argument("test")
    ap.add_argument("alphas", help="comma-separated: 1 is the tuned model, 0 the base")
    ap.add_argument("--home", default=None, help="lmtailor home (the answer cache)")
    args = ap.parse_args()

    from safetensors.torch import load_file, save_file

    from lmtailor.evaluate.retention import measure
    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.home import home_dir
    from lmtailor.models.catalog import EMBEDDED, resolve

    def weights(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    base, tuned = weights(resolve(EMBEDDED, args.home).path), weights(args.tuned)
    for a in (float(x) for x in args.alphas.split(",")):
        out = args.tuned.with_name(f"{args.tuned.name}-a{a:g}")
        if not out.exists():
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for f in args.tuned.iterdir():  # the card (its base), config, tokenizer, chat template
                if f.is_file() and f.suffix in (".json", ".jinja", ".txt", ".model"):
                    shutil.copy(f, tmp / f.name)
            mixed = {
                k: (base[k] + a * (v - base[k])).contiguous() if k in base else v for k, v in tuned.items()
            }
            save_file(mixed, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tmp.rename(out)
        t0 = time.time()
        spec = EvalSpec(models=[str(out)], data=args.test, max_new_tokens=96, retention=False,
                        output=str(home_dir(args.home) / "evals" / out.name))  # fmt: skip
        result = run_eval(spec, home=args.home, log=lambda _: None)
        metric = "f1" if "f1" in result["metrics"] else result["metrics"][0]
        kept = measure(EMBEDDED, str(out), home=args.home, log=lambda _: None)
        print(json.dumps({"model": out.name, "alpha": a, metric: result["models"][0]["scores"][metric]["value"],
                          "retention": kept["value"], "kept": kept["kept"], "eligible": kept["eligible"],
                          "s": round(time.time() - t0)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
