"""The web console in headless Chromium (Playwright), against a real server on 127.0.0.1 with tiny models:
upload a bad file, train with a live curve, chat with the tuned model, the arena, evaluation, Chinese.

Screenshots of each page go to tests/artifacts/console/ (or $LMTAILOR_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ARTIFACTS = (
    Path(os.environ.get("LMTAILOR_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")) / "console"
)
ROWS = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "William Shakespeare."),
        ("What is the largest ocean?", "The Pacific Ocean."), ("中国的首都是哪里？", "北京。")]  # fmt: skip
LONG = 90_000  # ms: the longest wait for a training job of the tiny model


def chat_lines(rows) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                              ensure_ascii=False) + "\n" for q, a in rows)  # fmt: skip


@pytest.fixture(scope="module")
def console(lively_llama_dir, lively_qwen2_dir, tmp_path_factory, server_class):
    """A server with the job store and worker, serving two tiny models; the console at its root."""
    from lmtailor.platform.store import Store
    from lmtailor.platform.worker import Worker
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    home = tmp_path_factory.mktemp("console-home")
    store = Store(home)
    worker = Worker(store, workers=1, poll=0.2)
    pool = ModelPool(home=home, models=[str(lively_llama_dir), str(lively_qwen2_dir)], engine="transformers",
                     dtype="float32", store=store)  # fmt: skip
    server = server_class(create_app(pool, store=store, worker=worker), pool)
    worker.start()
    server.store = store
    yield server
    server.stop()
    worker.stop()


@pytest.fixture(scope="module")
def page(open_page, console):
    return open_page(console.url + "/#models")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_bad_line_is_named_and_the_good_rows_previewed(page, tmp_path, lively_llama_dir):
    data = tmp_path / "facts.jsonl"
    lines = chat_lines(ROWS).splitlines()
    lines.insert(2, '{"messages": [{"role": "user", "content": "no answer"')  # line 3: cut-off JSON
    lines.insert(4, json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))  # line 5
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page.goto(page.url.split("#")[0] + "#data")
    page.select_option("#data-model", lively_llama_dir.name)
    page.set_input_files("#data-upload", str(data))
    page.click("#data-upload-go")
    errors = page.locator("#data-errors tbody tr")
    errors.first.wait_for()
    assert errors.count() == 2
    assert errors.nth(0).locator("td").first.inner_text() == "facts.jsonl:3"
    assert errors.nth(1).locator("td").first.inner_text() == "facts.jsonl:5"
    assert "assistant" in errors.nth(1).inner_text()
    assert "6 rows, 4 usable, 2 bad" in page.inner_text("#data-summary")
    assert page.locator("#data-preview tbody tr").count() == 4
    assert page.locator("#data-histogram rect.bar").count() >= 1
    page.click("#data-clean")
    page.locator("#clean-result").wait_for()
    assert "4 rows before, 4 after" in page.inner_text("#clean-result")
    shot(page, "data")


def test_hostile_names_and_rows_are_shown_as_text_and_run_nothing(page, tmp_path, lively_llama_dir):
    """A file name and data rows made of HTML: the console shows them as text, and none of their script runs
    (each would set window.__xss)."""
    tags = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
            '<svg onload="window.__xss=3"></svg>']  # fmt: skip
    data = tmp_path / "<img src=x onerror=window.__xss=4>.jsonl"
    lines = chat_lines([(f"Question {t}", f"Answer {t}") for t in tags]).splitlines()
    lines.append('{"messages": [{"role": "user", "content": "<b onmouseover=window.__xss=5>cut')  # a bad line
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page.goto(page.url.split("#")[0] + "#data")
    page.evaluate("window.__xss = undefined")
    page.select_option("#data-model", lively_llama_dir.name)
    page.set_input_files("#data-upload", str(data))
    page.click("#data-upload-go")  # the preview of this file, not the one an earlier test uploaded
    page.wait_for_function(
        "(t) => document.querySelector('#data-preview').innerText.includes(t)", arg=tags[1]
    )
    preview = page.inner_text("#data-preview")
    assert all(t in preview for t in tags), preview  # the markup itself, as text
    assert data.name in page.inner_text("#data-errors") and data.name in page.inner_text("#data-files")
    assert (
        page.locator("#data-preview img, #data-preview script, #data-preview svg, #data-errors b").count()
        == 0
    )
    page.goto(page.url.split("#")[0] + "#train")  # the file's name in the train page's lists too
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    # the negative control: the same markup put in as HTML does run here
    page.evaluate(
        "(t) => { const d = document.createElement('div'); d.innerHTML = t; document.body.append(d); }",
        tags[0],
    )
    page.wait_for_function("window.__xss === 1")
    # leave the shared page as this test found it: a fresh load on the data page (the next test's goto to
    # #train must change the hash, or the train page's lists are not refetched)
    page.goto(page.url.split("#")[0] + "#data")
    page.reload()


# what the parrot model answers, whatever it is asked: each tag would set window.__xss if it ran as HTML
PARROT_TAGS = ['<img src=x onerror="window.__xss=6">', "<script>window.__xss=7</script>",
               '<svg onload="window.__xss=8"></svg>']  # fmt: skip
PARROT_SAYS = "The answer:" + "".join(PARROT_TAGS)


@pytest.fixture(scope="module")
def parrot_dir(smol_dir, tmp_path_factory) -> Path:
    """A tiny Llama that answers every chat prompt with PARROT_SAYS: its vocabulary has the three tags as added
    tokens, and its weights make a chain of them (no attention or MLP output; each token's embedding points the
    head at the next one), from the last token of the chat template's generation prompt to <|im_end|>. Its
    folder's name is markup too (the console shows model names, in its charts as well)."""
    import itertools

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmtailor.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(smol_dir))  # its own copy: the tags are added to it
    tokenizer.add_tokens(PARROT_TAGS)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
    chain = [tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]]
    chain += tokenizer("The answer:", add_special_tokens=False)["input_ids"]
    chain += tokenizer.convert_tokens_to_ids(PARROT_TAGS) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain)  # one next token per token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (token, after) in enumerate(itertools.pairwise(chain)):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[after, i] = 10.0  # a logit of 57 after the norm, every other 0
    folder = tmp_path_factory.mktemp("parrot") / "<img src=x onerror=window.__xss=9>"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_hostile_model_answers_and_names_are_shown_as_text_and_run_nothing(open_page, server_class, parrot_dir,
                                                                           lively_llama_dir, tmp_path):  # fmt: skip
    """A served model whose answers and name are HTML, in the chat, the arena and an evaluation's table, chart
    and examples: shown as text, and none of their script runs (each would set window.__xss)."""
    from lmtailor.platform.store import Store
    from lmtailor.platform.worker import Worker
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    parrot, other = parrot_dir.name, lively_llama_dir.name
    store = Store(tmp_path / "home")
    worker = Worker(store, workers=1, poll=0.2)
    pool = ModelPool(home=tmp_path / "home", models=[str(parrot_dir), str(lively_llama_dir)],
                     engine="transformers", dtype="float32", store=store)  # fmt: skip
    server = server_class(create_app(pool, store=store, worker=worker), pool)
    worker.start()
    try:
        page = open_page(server.url + "/#chat")
        page.evaluate("window.__xss = undefined")
        page.locator(f"#chat-model option[value='{parrot}']").wait_for(state="attached")
        page.select_option("#chat-model", parrot)
        page.fill("#chat-temperature", "0")
        page.fill("#chat-max", "32")
        page.fill("#chat-input", "What is the capital of France?")
        page.press("#chat-input", "Enter")
        page.wait_for_function(
            "(t) => document.querySelector('.msg.assistant .text')?.textContent === t", arg=PARROT_SAYS
        )
        assert page.inner_text(".msg.assistant .who") == parrot
        page.goto(server.url + "/#arena")
        page.select_option("#arena-a", parrot)
        page.select_option("#arena-b", other)
        page.fill("#arena-prompt", "Tell me about the sea.")
        page.click("#arena-go")
        page.locator("#arena-vote").wait_for()
        assert page.inner_text("#arena-out-a") == PARROT_SAYS and page.inner_text("#arena-name-a") == parrot
        page.click("#arena-vote button[data-vote=a]")
        page.locator("#arena-tally tbody tr", has_text=parrot).wait_for()
        test = tmp_path / "test.jsonl"
        test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "reference": a})
                                + "\n" for q, a in ROWS[:2]), encoding="utf-8")  # fmt: skip
        uploaded = server.client().files.create(file=open(test, "rb"), purpose="evals")
        run_evaluation(page, uploaded.id, [parrot, other], "contains", 16)
        page.locator("#eval-examples tbody tr").first.wait_for(timeout=LONG)
        assert page.inner_text("#eval-examples tbody tr td:nth-child(3)") == PARROT_SAYS
        assert parrot in page.inner_text("#eval-table") and parrot in page.inner_text("#eval-examples thead")
        assert page.locator("#eval-chart rect.bar").count() == 2
        title = page.text_content("#eval-chart rect.bar title")  # the chart's one innerHTML: escaped
        assert title.startswith(parrot + ": "), title
        shot(page, "evaluate-hostile")
        boxes = "#chat-log #arena-out-a #arena-name-a #arena-tally #eval-table #eval-examples".split()
        assert page.locator(", ".join(f"{b} img, {b} script, {b} svg" for b in boxes)).count() == 0
        assert page.locator("#eval-chart img, #eval-chart script, #eval-chart svg svg").count() == 0
        page.wait_for_timeout(500)
        assert page.evaluate("window.__xss") is None
        # the negative control: the answer the chat showed, put in as HTML, does run here
        page.evaluate("(t) => { const d = document.createElement('div'); d.innerHTML = t; document.body.append(d); }",
                      page.text_content(".msg.assistant .text"))  # fmt: skip
        page.wait_for_function("window.__xss !== undefined")
    finally:
        server.stop()
        worker.stop()


@pytest.fixture(scope="module")
def tuned(page, console, tmp_path_factory, lively_llama_dir) -> dict:
    """One fine-tuning job started from the Train page, watched on it to the end: its model, and what the page
    showed on the way. The tests that need a tuned model take this fixture, whatever order they run in."""
    client = console.client()
    data = tmp_path_factory.mktemp("console-train") / "train.jsonl"
    data.write_text(chat_lines(ROWS * 4), encoding="utf-8")
    uploaded = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    page.goto(page.url.split("#")[0] + "#train")
    page.select_option("#train-model", lively_llama_dir.name)
    page.locator(f"#train-file option[value='{uploaded.id}']").wait_for(state="attached")
    page.select_option("#train-file", uploaded.id)
    page.select_option("#train-strategy", "lora")
    page.fill("#train-epochs", "25")
    page.fill("#train-batch", "2")
    page.fill("#train-lr", "0.01")
    page.fill("#train-valratio", "0.25")
    page.fill("#train-suffix", "console")
    page.locator("#train-memory").filter(has_text=re.compile("Memory: about")).wait_for()
    page.click("#train-go")
    points = page.locator("#mon-chart circle.pt")
    points.first.wait_for(timeout=LONG)
    first = points.count()
    page.wait_for_function(
        f"document.querySelectorAll('#mon-chart circle.pt').length > {first}", timeout=LONG
    )
    seen = {"status_while_running": page.inner_text("#mon-status")}
    page.locator("#mon-chart circle.pt[data-series=valid]").first.wait_for(timeout=LONG)
    shot(page, "train")
    page.locator("#mon-status.succeeded").wait_for(timeout=LONG * 6)
    job = next(j for j in client.fine_tuning.jobs.list().data if j.training_file == uploaded.id)
    return {**seen, "model": job.fine_tuned_model, "status_at_end": page.inner_text("#mon-status")}


def test_training_shows_a_growing_curve_then_the_tuned_model(tuned, lively_llama_dir):
    # the fixture waited for the curve to grow and for a validation point: here what the page said
    assert "step" in tuned["status_while_running"]
    assert tuned["model"].startswith(f"ft:{lively_llama_dir.name}:console:")
    assert tuned["model"] in tuned["status_at_end"]


def test_chat_streams_from_the_tuned_model(page, tuned):
    page.goto(page.url.split("#")[0] + "#chat")
    page.locator(f"#chat-model option[value='{tuned['model']}']").wait_for(state="attached")
    page.select_option("#chat-model", tuned["model"])
    page.fill("#chat-system", "You answer briefly.")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max", "12")
    page.fill("#chat-input", "What is the capital of France?")
    page.press("#chat-input", "Enter")
    answer = page.locator(".msg.assistant .text").last
    page.wait_for_function("!document.querySelector('.msg.assistant .text').classList.contains('streaming') && "
                           "document.querySelector('.msg.assistant .text').textContent.length > 0")  # fmt: skip
    assert answer.inner_text().strip()
    assert page.locator(".msg.user .text").last.inner_text() == "What is the capital of France?"
    shot(page, "chat")


def test_arena_two_models_side_by_side_vote_and_tally(page, lively_llama_dir, lively_qwen2_dir):
    page.goto(page.url.split("#")[0] + "#arena")
    page.select_option("#arena-a", lively_llama_dir.name)
    page.select_option("#arena-b", lively_qwen2_dir.name)
    page.fill("#arena-prompt", "Tell me about the sea.")
    page.click("#arena-go")
    page.locator("#arena-vote").wait_for()
    assert page.inner_text("#arena-out-a").strip() and page.inner_text("#arena-out-b").strip()
    assert page.inner_text("#arena-name-a") == lively_llama_dir.name
    page.click("#arena-vote button[data-vote=a]")
    row = page.locator("#arena-tally tbody tr").first
    row.wait_for()
    assert row.locator("td").nth(1).inner_text() == "1"  # the pair in name order: lively-llama first
    # blind: the names stay hidden until the vote
    page.check("#arena-blind")
    page.fill("#arena-prompt", "And about the mountains?")
    page.click("#arena-go")
    page.locator("#arena-vote").wait_for()
    assert page.inner_text("#arena-name-a") == "Model A" and page.inner_text("#arena-name-b") == "Model B"
    shot(page, "arena")
    page.click("#arena-vote button[data-vote=tie]")
    page.wait_for_function("document.querySelector('#arena-name-a').textContent !== 'Model A'")
    names = {page.inner_text("#arena-name-a"), page.inner_text("#arena-name-b")}
    assert names == {lively_llama_dir.name, lively_qwen2_dir.name}
    page.wait_for_function(
        "document.querySelector('#arena-tally tbody td:nth-child(4)')?.textContent === '1'"
    )


def run_evaluation(page, file_id: str, models: list[str], metrics: str, tokens: int) -> None:
    """On the Evaluate page: pick the test file and the models (the first is the baseline), then run."""
    page.goto(page.url.split("#")[0] + "#evaluate")
    page.locator(f"#eval-file option[value='{file_id}']").wait_for(state="attached")
    page.select_option("#eval-file", file_id)
    for model in models:
        page.check(f"#eval-models input[value='{model}']")
    page.fill("#eval-metrics", metrics)
    page.fill("#eval-tokens", str(tokens))
    page.click("#eval-go")


def test_evaluation_table_chart_and_examples(page, console, tmp_path, lively_llama_dir, lively_qwen2_dir):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "reference": a},
                                       ensure_ascii=False) + "\n" for q, a in ROWS), encoding="utf-8")  # fmt: skip
    uploaded = console.client().files.create(file=open(test, "rb"), purpose="evals")
    run_evaluation(page, uploaded.id, [lively_llama_dir.name, lively_qwen2_dir.name], "contains, chrf", 8)
    page.locator("#eval-result").wait_for(timeout=LONG)
    rows = page.locator("#eval-table tbody tr")
    assert rows.count() == 2 and re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", rows.nth(1).inner_text())
    assert rows.nth(0).locator("td").first.inner_text() == lively_llama_dir.name  # as picked, not its folder
    assert page.locator("#eval-chart rect.bar").count() == 4  # 2 metrics x 2 models
    assert page.locator("#eval-examples tbody tr").count() == 4
    shot(page, "evaluate")


def test_models_jobs_and_errors_in_words(page, console, tuned, lively_llama_dir):
    page.goto(page.url.split("#")[0] + "#models")
    rows = page.locator("#models-table tbody tr", has_text=":console:")
    rows.first.wait_for()
    rows.filter(has_not_text="ckpt-step").first.click()  # the job's final model: its card from lmtailor.json
    card = page.inner_text("#model-card")
    assert "lora" in card and "learning_rate" in card and "train.jsonl, 12 rows" in card
    assert re.search(r"retention \(what tuning kept[^)]*\)\s+\d+% \[\d+%, \d+%\] · \d+/\d+", card), card
    rows.filter(has_text="ckpt-step").first.click()  # a checkpoint: the card of the job that made it
    card = page.inner_text("#model-card")
    assert "lora" in card and "train.jsonl" in card and lively_llama_dir.name in card
    shot(page, "models")
    page.goto(page.url.split("#")[0] + "#jobs")
    done = page.locator("#jobs-table tbody tr.succeeded", has_text="fine_tune").first
    done.wait_for()
    done.click()
    page.locator("#job-log").filter(has_text="The job has successfully completed").wait_for()
    shot(page, "jobs")
    # an error is a sentence in the banner, not a traceback
    page.goto(page.url.split("#")[0] + "#arena")
    page.select_option("#arena-b", page.input_value("#arena-a"))
    page.fill("#arena-prompt", "hello")
    page.click("#arena-go")
    assert page.locator("#banner.error").inner_text() == "Pick two different models"


def test_a_job_whose_process_kept_dying_offers_resume(page, console, lively_llama_dir):
    """A job failed by its process's deaths gets a Resume button on its monitor (the API revives it); here it
    died before its first checkpoint, and the API's refusal is shown in words. A job failed otherwise has none."""
    from lmtailor.platform.store import Job, new_id, now

    def failed(code: str) -> str:
        return console.store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="failed", created_at=now(),
                                     model=lively_llama_dir.name, finished_at=now(), result_files=[],
                                     error={"code": code, "message": f"failed: {code}", "param": None})).id  # fmt: skip

    for job_id, offered in ((failed("process_died"), True), (failed("invalid_file"), False)):
        page.goto(page.url.split("#")[0] + "#jobs")
        page.locator("#jobs-table tbody tr", has_text=job_id).click()
        page.locator("#job-title", has_text=job_id).wait_for()
        page.click("#job-open")
        page.locator(
            "#mon-status", has_text=f"failed: {'process_died' if offered else 'invalid_file'}"
        ).wait_for()
        assert page.locator("#mon-resume").is_visible() is offered, job_id
    page.goto(page.url.split("#")[0] + "#jobs")
    page.locator("#jobs-table tbody tr", has_text=job_id).first.wait_for()
    died = next(j for j in console.store.jobs(("failed",)) if j.error["code"] == "process_died").id
    page.locator("#jobs-table tbody tr", has_text=died).click()
    page.locator("#job-title", has_text=died).wait_for()
    page.click("#job-open")
    page.click("#mon-resume")
    page.locator("#banner", has_text="failed before its first checkpoint").wait_for()
    assert console.store.get(Job, died).status == "failed"  # nothing to resume from: left as it was


def test_evaluation_shows_what_tuning_cost(page, console, tuned, tmp_path, lively_llama_dir):
    """A tuned model beside its base on the Evaluate page: a retention column, filled for the tuned model."""
    client = console.client()
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "reference": a},
                                       ensure_ascii=False) + "\n" for q, a in ROWS[:2]), encoding="utf-8")  # fmt: skip
    uploaded = client.files.create(file=open(test, "rb"), purpose="evals")
    run_evaluation(page, uploaded.id, [lively_llama_dir.name, tuned["model"]], "contains", 4)
    # the page still shows the evaluation before this one until this one's result comes
    page.locator("#eval-table thead", has_text="retention vs its base").wait_for(timeout=LONG * 2)
    cells = page.locator("#eval-table tbody td.retention")
    assert cells.nth(0).inner_text() == "–"  # the base has no base of its own
    assert re.match(r"\d+% \[\d+%, \d+%\] · \d+/\d+", cells.nth(1).inner_text())


def test_merge_from_the_models_page(page, tuned, lively_llama_dir):
    """The tuned model and its base, averaged (linear): a merge job from the page, the result in the table."""
    page.goto(page.url.split("#")[0] + "#models")
    tuned = tuned["model"]
    page.locator(f"#merge-models input[value='{tuned}']").wait_for(state="attached")
    page.check(f"#merge-models input[value='{lively_llama_dir.name}']")
    page.check(f"#merge-models input[value='{tuned}']")
    page.select_option("#merge-method", "linear")
    page.fill("#merge-suffix", "blend")
    page.click("#merge-go")
    page.locator("#merge-status.succeeded").wait_for(timeout=LONG)
    assert "merged:blend:" in page.inner_text("#merge-status")
    row = page.locator("#models-table tbody tr", has_text="merged:blend:")
    row.wait_for()
    assert "merged" in row.locator("td").nth(1).inner_text()
    page.uncheck(f"#merge-models input[value='{tuned}']")
    page.check(f"#merge-models input[value='{lively_llama_dir.name}']")
    page.click("#merge-go")  # one model only: refused in words
    assert page.locator("#banner.error").inner_text() == "Pick two or more models to merge"
    shot(page, "models-merge")


def test_synthesize_a_training_file_from_documents(page, tmp_path, lively_llama_dir):
    """Two documents uploaded from the Data page, a served model as generator: the job's counts on the page and
    its training file among the uploaded files (a random tiny model writes little worth keeping)."""
    md = tmp_path / "tower.md"
    md.write_text("# Tower\n\n" + " ".join(f"Door {i} is blue." for i in range(10)), encoding="utf-8")
    txt = tmp_path / "塔.txt"
    txt.write_text("".join(f"第{i}扇门是蓝色的。" for i in range(10)), encoding="utf-8")
    page.goto(page.url.split("#")[0] + "#data")
    page.click("#synth-go")  # nothing chosen: refused in words
    assert page.locator("#banner.error").inner_text() == "Choose one or more documents first"
    page.set_input_files("#synth-docs", [str(md), str(txt)])
    page.select_option("#synth-generator", lively_llama_dir.name)
    page.fill("#synth-pairs", "2")
    page.fill("#synth-paraphrases", "1")
    page.click("#synth-go")
    page.locator("#synth-status.succeeded").wait_for(timeout=LONG)
    assert re.match(r"Done: \d+ training rows, \d+ held-out questions", page.inner_text("#synth-status"))
    summary = page.inner_text("#synth-result")
    assert re.search(r"2 documents, \d+ chunks; pairs kept \d+ of \d+", summary)
    # the file list reloads after the job's status turns "succeeded": wait for the new file to be picked
    page.wait_for_function(
        "(() => { const s = document.querySelector('#data-files');"
        " return s.selectedIndex >= 0 && s.options[s.selectedIndex].text.startsWith('synth_train.jsonl · file-'); })()",
        timeout=LONG,
    )
    page.fill("#synth-endpoint", "openai:@nowhere")  # a malformed endpoint: the server's words
    page.set_input_files("#synth-docs", [str(md)])
    page.click("#synth-go")
    from playwright.sync_api import expect

    expect(page.locator("#banner.error")).to_contain_text("openai:MODEL@BASE_URL")
    page.fill("#synth-endpoint", "")
    shot(page, "data-synth")


def test_chinese_is_switched_and_remembered(page):
    page.goto(page.url.split("#")[0] + "#train")
    page.click("#lang")
    assert page.inner_text("#tabs a[data-tab=models]") == "模型"
    assert page.inner_text("#train-go") == "开始训练"
    page.reload()
    assert page.inner_text("#tabs a[data-tab=train]") == "训练"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    shot(page, "train-zh")
    page.click("#lang")
    assert page.inner_text("#tabs a[data-tab=models]") == "Models"


def test_a_narrow_screen_does_not_scroll_sideways(browser, console):
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-US")
    page = context.new_page()
    try:
        for tab in ("chat", "arena", "train", "data"):
            page.goto(console.url + "/#" + tab)
            page.locator(f"#page-{tab}").wait_for()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{tab} is {width} px wide on a 390 px screen"
            shot(page, f"{tab}-narrow")
    finally:
        context.close()


def test_console_api_split_estimate_votes_download_and_delete(console, tmp_path, lively_llama_dir):
    """The endpoints behind the pages, through plain HTTP: each refuses bad input with a 400 in words."""
    import io
    import zipfile

    import httpx

    client, base = console.client(), console.url + "/v1/lmtailor"
    data = tmp_path / "split.jsonl"
    data.write_text(chat_lines([(f"Question {i}?", f"Answer {i}.") for i in range(20)]), encoding="utf-8")
    f = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    parts = httpx.post(f"{base}/files/{f.id}/split", json={"ratios": [0.5, 0.25, 0.25], "seed": 3}).json()[
        "files"
    ]
    assert {k: v["rows"] for k, v in parts.items()} == {"train": 10, "val": 5, "test": 5}
    assert parts["test"]["purpose"] == "evals" and parts["train"]["purpose"] == "fine-tune"
    again = httpx.post(f"{base}/files/{f.id}/split", json={"ratios": [0.5, 0.25, 0.25], "seed": 3}).json()[
        "files"
    ]
    assert client.files.content(again["test"]["id"]).text == client.files.content(parts["test"]["id"]).text
    bad = httpx.post(f"{base}/files/{f.id}/split", json={"ratios": [0.5, 0.7]})
    assert bad.status_code == 400 and "ratio" in bad.json()["error"]["message"]
    # a bad row stops the split, named, as `lmtailor data split` does (data/ops.py); on_error "skip" leaves it out
    lines = chat_lines([(f"Question {i}?", f"Answer {i}.") for i in range(8)]).splitlines()
    data.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n", encoding="utf-8")
    f = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    refused = httpx.post(f"{base}/files/{f.id}/split", json={"ratios": [0.5, 0.5]})
    assert refused.status_code == 400 and ":3:" in refused.json()["error"]["message"]
    skipped = httpx.post(f"{base}/files/{f.id}/split", json={"ratios": [0.5, 0.5], "on_error": "skip"}).json()
    assert skipped["skipped"] == 1 and sum(p["rows"] for p in skipped["files"].values()) == 8

    lora = httpx.post(f"{base}/estimate", json={"model": lively_llama_dir.name, "strategy": "lora"}).json()
    full = httpx.post(f"{base}/estimate", json={"model": lively_llama_dir.name, "strategy": "full"}).json()
    assert 0 < lora["trained_parameters"] < full["trained_parameters"] == full["parameters"]
    assert (
        lora["optimizer"] < full["optimizer"] and full["total"] > full["weights"] > 0 and full["machine"] > 0
    )
    missing = httpx.post(f"{base}/estimate", json={"model": "no-such-model"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"

    same = httpx.post(f"{base}/arena/votes", json={"model_a": lively_llama_dir.name, "model_b": lively_llama_dir.name,
                                                   "winner": "a"})  # fmt: skip
    assert same.status_code == 400

    tuned = _disposable_model(
        client, tmp_path, lively_llama_dir
    )  # its own: deleting it leaves the others' alone
    got = httpx.get(f"{base}/models/{tuned}/download", timeout=60)
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(got.content)).namelist()
    assert any(n.endswith("lmtailor.json") for n in names) and not any("/checkpoints/" in n for n in names)
    base_model = httpx.delete(f"{console.url}/v1/models/{lively_llama_dir.name}")
    assert base_model.status_code == 400 and lively_llama_dir.exists()  # only tuned models can be deleted
    checkpoints = [m.id for m in client.models.list() if m.id.startswith(tuned + ":ckpt-step-")]
    assert checkpoints
    deleted = client.models.delete(tuned)
    assert deleted.deleted and deleted.id == tuned
    left = {m.id for m in client.models.list()}
    assert tuned not in left and not left & set(checkpoints)  # its checkpoints lived in its folder
    with pytest.raises(Exception, match="does not exist"):
        client.chat.completions.create(
            model=tuned, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def _disposable_model(client, tmp_path: Path, lively_llama_dir: Path) -> str:
    """A short fine-tuning job through the SDK (a checkpoint every 2 steps) for a test that deletes its model."""
    import time

    data = tmp_path / "disposable.jsonl"
    data.write_text(chat_lines(ROWS * 2), encoding="utf-8")
    uploaded = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=uploaded.id, suffix="disposable",
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": 2, "batch_size": 2}}},
                                         extra_body={"lmtailor": {"strategy": "lora", "lora_r": 4, "save_steps": 2,
                                                                  "replay_ratio": 0, "retention": False}})  # fmt: skip
    deadline = time.monotonic() + LONG / 1000 * 3
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"{job.id} still {job.status}"
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model
