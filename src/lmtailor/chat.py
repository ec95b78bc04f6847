"""`lmtailor chat`: a terminal conversation with a local model, answers streamed as they are generated."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lmtailor.errors import LmtailorError
from lmtailor.home import atomic_write_json

HELP = "commands: /system TEXT (set the system prompt), /reset (forget the conversation), /save FILE, /exit"


def run_chat(model_ref: str, home=None, system: str | None = None, max_tokens: int = 256,
             temperature: float = 0.0, console: Console | None = None, input_fn=input,
             url: str | None = None, api_key: str | None = None) -> list[dict]:  # fmt: skip
    """A local model, or with `url` a model of any OpenAI-compatible server (lmtailor serve, vLLM, OpenAI)."""
    console = console or Console()
    if url:
        answer = _remote(model_ref, url, api_key)
    else:
        from lmtailor.models.loading import load_model, load_tokenizer

        tok, model = load_tokenizer(model_ref, home), load_model(model_ref, home)

        def answer(messages, max_tokens, temperature, console):
            return _stream(model, tok, messages, max_tokens, temperature, console)

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
        try:
            reply = answer(messages, max_tokens, temperature, console)
        except LmtailorError as e:  # the server went away or refused: say so, keep the conversation
            console.print(f"[red]error: {escape(str(e))}[/red]", highlight=False)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})


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


def _remote(model: str, url: str, api_key: str | None):
    """An answer function that streams from an OpenAI-compatible server; its errors become one clear line."""
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=1)

    def answer(messages, max_tokens, temperature, console) -> str:
        parts = []
        try:
            stream = client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            )
            console.print("[bold]model>[/bold] ", end="")
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    parts.append(piece)
                    console.print(piece, end="", markup=False, highlight=False)
        except openai.APIConnectionError as e:
            raise LmtailorError(f"cannot reach {url}: {e}") from e
        except openai.APIStatusError as e:
            raise LmtailorError(f"{url} answered {e.status_code}: {e.message}") from e
        console.print()
        return "".join(parts).strip()

    return answer


def load_transcript(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
