"""The Train page's more training files (headless Chromium): each added row becomes an entry of
`lmtailor.more_training_files` with its weight, in English and in Chinese. The jobs stay queued (no worker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def console(lively_llama_dir, tmp_path_factory, idle_server):
    server = idle_server(tmp_path_factory.mktemp("console-mix-home"), [str(lively_llama_dir)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(open_page, console):
    return open_page(console.url + "/#train")


def upload(client, path: Path, topic: str):
    rows = [{"messages": [{"role": "user", "content": f"{topic} {i}?"}, {"role": "assistant", "content": f"{i}."}]}
            for i in range(4)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return client.files.create(file=open(path, "rb"), purpose="fine-tune")


def test_more_training_files_with_their_weights_reach_the_job(page, console, lively_llama_dir, tmp_path):
    client = console.client()
    a, b, c = (upload(client, tmp_path / f"{x}.jsonl", x) for x in ("support", "general", "chat"))
    page.reload()
    page.locator(f"#train-file option[value='{c.id}']").wait_for(state="attached")
    page.select_option("#train-model", lively_llama_dir.name)
    page.select_option("#train-file", a.id)
    page.click("#train-more-add")
    page.click("#train-more-add")
    page.click("#train-more-add")
    rows = page.locator("#train-more .more")
    assert rows.count() == 3 and "Weight" in rows.first.inner_text()
    rows.nth(2).get_by_role("button", name="Remove").click()
    assert rows.count() == 2
    rows.nth(0).locator(".more-file").select_option(b.id)
    rows.nth(0).locator(".more-weight").fill("0.3")
    rows.nth(1).locator(".more-file").select_option(c.id)  # no weight: shares the rest with the training file
    assert page.get_attribute("#train-replay", "placeholder") == "auto (0.2)"
    page.fill("#train-replay", "0")  # replay off
    page.click("#train-go")
    page.locator("#banner").filter(has_text="created").wait_for()
    job = client.fine_tuning.jobs.list().data[0]
    assert job.training_file == a.id
    assert job.model_extra["lmtailor"]["options"]["more_training_files"] == [
        {"file": b.id, "weight": 0.3}, {"file": c.id, "weight": None}]  # fmt: skip
    assert job.model_extra["lmtailor"]["options"]["replay_ratio"] == 0

    page.click("#lang")  # the same rows in Chinese
    assert "添加数据文件" in page.inner_text("#train-mix") and "权重" in page.inner_text("#train-more")
    assert "回放比例" in page.inner_text("#page-train")
    assert "基座" in page.get_attribute("label:has(#train-replay)", "title")
    page.click("#lang")
