"""OpenAI's graders endpoints on a real server, through the official SDK's fine_tuning.alpha.graders."""

from __future__ import annotations

import openai
import pytest

EXACT = {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
         "reference": "{{ item.reference_answer }}", "operation": "eq"}  # fmt: skip


@pytest.fixture(scope="module")
def graders_server(start_server, lively_llama_dir, tmp_path_factory):
    server = start_server([str(lively_llama_dir)], tmp_path_factory.mktemp("graders-home"))
    yield server
    server.stop()


def test_validate_and_run_through_the_sdk(graders_server):
    graders = graders_server.client().fine_tuning.alpha.graders
    assert graders.validate(grader=EXACT).grader.name == "exact"
    with pytest.raises(openai.BadRequestError) as e:
        graders.validate(grader={**EXACT, "operation": "regex"})
    assert e.value.body["param"] == "grader.operation" and "eq, ne, like, ilike" in e.value.body["message"]
    hit = graders.run(grader=EXACT, model_sample="Paris", item={"reference_answer": "Paris"})
    assert hit.reward == 1.0 and hit.metadata.type == "string_check" and not hit.metadata.errors.other_error
    multi = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * close", "graders": {
        "exact": EXACT, "close": {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
                                  "reference": "{{ item.reference_answer }}", "evaluation_metric": "fuzzy_match"}}}  # fmt: skip
    got = graders.run(grader=multi, model_sample="Pari", item={"reference_answer": "Paris"})
    assert got.sub_rewards == {"exact": 0.0, "close": pytest.approx(8 / 9)} and got.reward == pytest.approx(
        4 / 9
    )
    python = {
        "type": "python",
        "name": "p",
        "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n",
    }
    assert graders.run(grader=python, model_sample="abc", item={}).reward == pytest.approx(0.3)
    broken = graders.run(grader=python | {"source": "def grade(sample, item):\n    raise KeyError('answer')\n"},
                         model_sample="abc", item={})  # fmt: skip
    assert broken.reward == 0.0 and broken.metadata.errors.python_grader_runtime_error
    assert "KeyError" in broken.metadata.errors.python_grader_runtime_error_details


def test_a_model_grader_asks_a_model_this_server_serves(graders_server, lively_llama_dir):
    """The tiny random model cannot answer with a score: the call is real (tokens used) and the unusable
    reply is a parse error with reward 0, not a failure of the request."""
    graders = graders_server.client().fine_tuning.alpha.graders
    score = {"type": "score_model", "name": "judge", "model": lively_llama_dir.name, "range": [0, 1],
             "sampling_params": {"max_completions_tokens": 4, "temperature": 0},
             "input": [{"role": "user", "content": "Score {{ sample.output_text }} from 0 to 1."}]}  # fmt: skip
    got = graders.run(grader=score, model_sample="Paris", item={})
    assert got.metadata.token_usage and got.metadata.token_usage > 0
    assert got.reward == 0.0 and got.metadata.errors.model_grader_parse_error
    missing = graders.run(grader=score | {"model": "no-such-model"}, model_sample="Paris", item={})
    assert missing.metadata.errors.model_grader_server_error
    assert "does not exist" in missing.metadata.errors.model_grader_server_error_details


def test_a_python_grader_sent_to_the_server_cannot_read_the_host(graders_server, monkeypatch):
    from lmtailor.graders import sandbox

    graders = graders_server.client().fine_tuning.alpha.graders
    nosy = {"type": "python", "name": "nosy",
            "source": "def grade(sample, item):\n    return len(open('/etc/passwd').read())\n"}  # fmt: skip
    got = graders.run(grader=nosy, model_sample="x", item={})
    assert got.reward == 0.0 and got.metadata.errors.python_grader_runtime_error
    assert "/etc/passwd" in got.metadata.errors.python_grader_runtime_error_details
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")  # a machine where no sandbox can be made
    monkeypatch.delenv(sandbox.TRUST_ENV, raising=False)
    sandbox.unavailable.cache_clear()
    try:
        with pytest.raises(openai.BadRequestError) as e:
            graders.run(grader=nosy, model_sample="x", item={})
        assert e.value.body["param"] == "grader" and "--trust-graders" in e.value.body["message"]
    finally:
        monkeypatch.undo()
        sandbox.unavailable.cache_clear()
