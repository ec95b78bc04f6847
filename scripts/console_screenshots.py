"""Screenshots of the web console with the real embedded model and the quickstart's tuned model, for the README.

Run after `make quickstart` (its home holds the `quickstart` model): starts `lmtailor serve` on a free port
with that home, drives the console in headless Chromium and writes docs/images/console-*.png. Takes about
five minutes on a 2-core CPU (one short training run, one evaluation of 50 questions by two models).

    python scripts/console_screenshots.py [--home ~/.lmtailor] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=os.environ.get("LMTAILOR_HOME", str(Path.home() / ".lmtailor")))
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args()
    home, out = Path(args.home), Path(args.out)
    if not (home / "models" / "quickstart" / "lmtailor.json").exists():
        raise SystemExit(f"no quickstart model in {home}: run `make quickstart` (or pass --home)")
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "screenshots-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "lmtailor.cli", "serve", "--port", str(port)],
                              env={**os.environ, "LMTAILOR_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        shoot(url, home, out)
    finally:
        server.terminate()
        server.wait(60)


def shoot(url: str, home: Path, out: Path) -> None:
    import openai
    from playwright.sync_api import sync_playwright

    from lmtailor.quickstart.run import sample_files

    train, test = sample_files(home)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    train_file = client.files.create(file=open(train, "rb"), purpose="fine-tune")
    test_file = client.files.create(file=open(test, "rb"), purpose="evals")
    question = json.loads(test.read_text(encoding="utf-8").splitlines()[0])["messages"][-1]["content"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, locale="en-US")
        page.set_default_timeout(600_000)
        page.goto(url + "/#chat")
        page.select_option("#chat-model", "quickstart")
        page.fill("#chat-temperature", "0")
        page.fill("#chat-input", question)
        page.press("#chat-input", "Enter")
        page.wait_for_function("document.querySelector('.msg.assistant .text') && "
                               "!document.querySelector('.msg.assistant .text').classList.contains('streaming')")  # fmt: skip
        page.screenshot(path=str(out / "console-chat.png"))

        page.goto(url + "/#arena")
        page.select_option("#arena-a", "smollm2-135m-instruct")
        page.select_option("#arena-b", "quickstart")
        page.fill("#arena-prompt", question)
        page.click("#arena-go")
        page.locator("#arena-vote").wait_for()
        page.screenshot(path=str(out / "console-arena.png"))

        page.goto(url + "/#evaluate")
        page.locator(f"#eval-file option[value='{test_file.id}']").wait_for(state="attached")
        page.select_option("#eval-file", test_file.id)
        page.check("#eval-models input[value='smollm2-135m-instruct']")
        page.check("#eval-models input[value='quickstart']")
        page.fill("#eval-tokens", "96")
        page.click("#eval-go")
        page.locator("#eval-result").wait_for()
        page.select_option("#eval-filter", "fixed")
        page.screenshot(path=str(out / "console-evaluate.png"))

        page.goto(url + "/#train")
        page.select_option("#train-model", "smollm2-135m-instruct")
        page.locator(f"#train-file option[value='{train_file.id}']").wait_for(state="attached")
        page.select_option("#train-file", train_file.id)
        page.fill("#train-epochs", "3")
        page.fill("#train-valratio", "0.1")
        page.fill("#train-suffix", "orvane")
        page.locator("#train-memory").filter(has_text="Memory: about").wait_for()
        page.click("#train-go")
        page.wait_for_function("document.querySelectorAll('#mon-chart circle.pt[data-series=valid]').length >= 1 && "
                               "document.querySelectorAll('#mon-chart circle.pt').length >= 5")  # fmt: skip
        page.screenshot(path=str(out / "console-train.png"), full_page=True)
        page.click("#mon-cancel")

        page.goto(url + "/#data")
        page.click("#lang")
        page.locator(f"#data-files option[value='{train_file.id}']").wait_for(state="attached")
        page.select_option("#data-files", train_file.id)
        page.select_option("#data-model", "smollm2-135m-instruct")
        page.click("#data-inspect")
        page.locator("#data-histogram rect").first.wait_for()
        page.screenshot(path=str(out / "console-data-zh.png"), full_page=True)
        page.click("#lang")
        browser.close()
    print("wrote", ", ".join(sorted(p.name for p in out.glob("console-*.png"))))


if __name__ == "__main__":
    main()
