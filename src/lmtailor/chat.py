"""`lmtailor chat`: a terminal conversation with a local model, answers streamed as they are generated."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rich.console import Console

from lmtailor.home import atomic_write_json

HELP = "commands: /system TEXT (set the system prompt), /reset (forget the conversation), /save FILE, /exit"


def run_chat(model_ref: str, home=None, system: str | None = None, max_tokens: int = 256,
             temperature: float = 0.0, console: Console | None = None, input_fn=input) -> list[dict]:  # fmt: skip
    from lmtailor.models.loading import load_model, load_tokenizer

    console = console or Console()
    tok = load_tokenizer(model_ref, home)
    model = load_model(model_ref, home)
    history: list[dict] = []
    console.print(f"chatting with {model_ref}. {HELP}")
    while True:
        try:
            line = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return history
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return history
        if line == "/reset":
            history.clear()
            console.print("[dim]conversation cleared[/dim]")
            continue
        if line.startswith("/system"):
            system = line[len("/system") :].strip() or None
            console.print(f"[dim]system prompt: {system or '(model default)'}[/dim]")
            continue
        if line.startswith("/save"):
            target = Path(line[len("/save") :].strip() or "chat.json")
            atomic_write_json(target, {"model": model_ref, "system": system, "messages": history})
            console.print(f"[dim]saved {target}[/dim]")
            continue
        if line.startswith("/"):
            console.print(f"[yellow]unknown command {line.split()[0]}[/yellow]. {HELP}")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        answer = _stream(model, tok, messages, max_tokens, temperature, console)
        history.append({"role": "assistant", "content": answer})


def _stream(model, tok, messages, max_tokens, temperature, console) -> str:
    import torch
    from transformers import TextIteratorStreamer

    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, max_new_tokens=max_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
                  do_sample=temperature > 0)  # fmt: skip
    if temperature > 0:
        kwargs["temperature"] = temperature

    def work():
        with torch.inference_mode():
            model.generate(**kwargs)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    parts = []
    console.print("[bold]model>[/bold] ", end="")
    for piece in streamer:
        parts.append(piece)
        console.print(piece, end="", markup=False, highlight=False)
    console.print()
    thread.join()
    return "".join(parts).strip()


def load_transcript(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
