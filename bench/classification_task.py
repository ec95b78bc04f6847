"""A classification acceptance run: `lmtailor train` with defaults, then `lmtailor eval` base vs tuned.

The task: route customer messages to billing / technical / shipping / account. The data are generated from
templates with a fixed seed; the test messages use templates that training never sees, so the tuned model
must classify new wordings, not recall training rows. Both commands run as a user would type them.

    python bench/classification_task.py [--workdir DIR] [--train-rows 240] [--test-rows 80]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

TEMPLATES = {
    "billing": [
        "I was charged twice for my {product} subscription this month.",
        "Why is my invoice {amount} dollars higher than last time?",
        "Please refund the {amount} dollars you took for the {product}.",
        "My credit card was billed for a plan I cancelled in {month}.",
        "Can I get a receipt for the {product} payment I made on {day}?",
        "The discount code was not applied to my {product} order total.",
        "How do I switch from monthly to yearly payments?",
        "There is a charge of {amount} dollars I do not recognise.",
        # held out for testing
        "You took money from my account twice for the same {product} bill.",
        "I need the VAT invoice for last {month}'s payment.",
        "Why did the price of my plan go up without notice?",
        "Your system charged me {amount} dollars after I unsubscribed.",
    ],
    "technical": [
        "The {product} app crashes every time I open the settings page.",
        "I get error code {code} when I try to sync my {product}.",
        "My {product} will not connect to the wifi after the update.",
        "The screen of my {product} stays black after it boots.",
        "Uploading files fails halfway with a timeout error.",
        "The {product} battery drains in two hours since {day}.",
        "Login works on the website but the mobile app freezes.",
        "The firmware update for the {product} is stuck at 40 percent.",
        # held out for testing
        "After installing version {code} the {product} keeps rebooting.",
        "Bluetooth pairing with my {product} never finishes.",
        "The dashboard shows a blank page in every browser I try.",
        "My {product} makes a clicking noise and then shuts down.",
    ],
    "shipping": [
        "My {product} order has not arrived and it has been {days} days.",
        "The tracking number for my {product} shows no updates since {day}.",
        "The parcel arrived damaged and the {product} box was crushed.",
        "Can you deliver my {product} to a different address?",
        "The courier left my package at the wrong house.",
        "How long does delivery to {city} usually take?",
        "I received someone else's order instead of my {product}.",
        "Is express delivery available for the {product}?",
        # held out for testing
        "Where is my package? It was due in {city} on {day}.",
        "The delivery driver never came even though I was home all day.",
        "Only half of the items in my {product} order were in the box.",
        "Can I pick up my {product} from a depot instead of home delivery?",
    ],
    "account": [
        "I forgot my password and the reset email never comes.",
        "How do I change the email address on my account?",
        "Please delete my account and all my personal data.",
        "Someone else logged into my account from {city}.",
        "I want to add a second user to my {product} account.",
        "My account was locked after three wrong passwords.",
        "How can I turn on two-factor authentication?",
        "I need to change the name on my profile after marriage.",
        # held out for testing
        "I can no longer sign in because my phone number changed.",
        "Please merge my two accounts into one.",
        "Who can see my profile details and how do I hide them?",
        "My username was changed without my permission.",
    ],
}
HELD_OUT = 4  # the last templates of each class are test-only
FILL = {
    "product": ["Skyline router", "Nimbus watch", "Atlas tablet", "Pico speaker", "Vela camera", "Orbit hub"],
    "amount": ["12", "49", "89", "120", "15.50", "230"],
    "month": ["March", "June", "September", "December", "January"],
    "day": ["Monday", "Friday", "the 3rd", "the 21st", "last weekend"],
    "code": ["E42", "503", "X-17", "2.4.1", "0x80070"],
    "days": ["ten", "twelve", "three weeks of", "five"],
    "city": ["Lisbon", "Osaka", "Denver", "Nairobi", "Tallinn"],
}
INSTRUCTION = (
    "Classify this customer message as billing, technical, shipping or account. Answer with the label only."
)


def make_rows(n: int, test: bool, rng: random.Random) -> list[dict]:
    rows = []
    labels = list(TEMPLATES)
    for i in range(n):
        label = labels[i % len(labels)]
        pool = TEMPLATES[label][-HELD_OUT:] if test else TEMPLATES[label][:-HELD_OUT]
        text = rng.choice(pool).format(**{k: rng.choice(v) for k, v in FILL.items()})
        user = {"role": "user", "content": f"{INSTRUCTION}\n\nMessage: {text}"}
        if test:
            rows.append({"messages": [user], "reference": label})
        else:
            rows.append({"messages": [user, {"role": "assistant", "content": label}]})
    return rows


def lmtailor(*args: str) -> None:
    print("$ lmtailor " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lmtailor.cli", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="classification-run")
    ap.add_argument("--train-rows", type=int, default=240)
    ap.add_argument("--test-rows", type=int, default=80)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, rows in (
        ("train", make_rows(args.train_rows, False, rng)),
        ("test", make_rows(args.test_rows, True, rng)),
    ):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    t0 = time.time()
    lmtailor("train", "--model", "smollm2-135m-instruct", "--data", str(work / "train.jsonl"),
             "--output", str(work / "tuned"))  # fmt: skip
    t1 = time.time()
    lmtailor("eval", "--model", "smollm2-135m-instruct", "--model", str(work / "tuned"),
             "--data", str(work / "test.jsonl"), "--output", str(work / "eval"))  # fmt: skip
    result = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
    print(f"\ntrain {t1 - t0:.0f} s, eval {time.time() - t1:.0f} s")
    for m in result["models"]:
        cells = [
            f"{n} {s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" for n, s in m["scores"].items()
        ]
        print(f"{m['name']}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
