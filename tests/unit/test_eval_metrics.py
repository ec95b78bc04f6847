"""Every metric against values computed by hand or by scikit-learn / sacrebleu on small fixed inputs."""

import math

import numpy as np
import pytest

from lmtailor.errors import LmtailorError
from lmtailor.evaluate import metrics as M

LABELS = ["negative", "neutral", "positive"]
PREDS = [
    "The answer is Positive.",
    "negative",
    "I don't know",
    "positive and negative",
    "Neutral!",
    "positive",
]
REFS = ["positive", "negative", "positive", "negative", "neutral", "negative"]


def test_exact_match_and_contains_by_hand():
    preds = ["Paris.", "It is Paris", "paris", "北京。", "我认为是北京", "Parisian"]
    refs = ["paris", "Paris", "Paris!", "北京", "北京", "Paris"]
    assert M.exact_match(preds, refs).per_example.tolist() == [1, 0, 1, 1, 0, 0]
    assert M.contains(preds, refs).per_example.tolist() == [1, 1, 1, 1, 1, 0]  # word boundary: not "Parisian"
    assert M.exact_match(preds, refs).value == pytest.approx(3 / 6)
    assert M.contains(preds, refs).value == pytest.approx(5 / 6)
    # a number or a Latin word in a Chinese answer has no spaces around it: Chinese characters bound it too
    mixed = ["一共有8个苹果", "一共有18个", "答案是Paris。", "答案是Parisian"]
    assert M.contains(mixed, ["8", "8", "Paris", "Paris"]).per_example.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The answer is Positive.", "positive"),
        ("NEGATIVE", "negative"),
        ("I don't know", M.UNMATCHED),  # names no label
        ("positive or negative", M.UNMATCHED),  # names two
        ("positively", M.UNMATCHED),  # word boundaries
    ],
)
def test_map_label(prediction, expected):
    assert M.map_label(prediction, LABELS) == expected


def test_map_label_prefers_the_longer_label_it_names():
    labels = ["positive", "very positive"]
    assert M.map_label("Very positive!", labels) == "very positive"
    assert M.map_label("positive", labels) == "positive"
    assert M.map_label("情感是正面", ["正面", "负面"]) == "正面"


def test_classification_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    scores = M.classification(PREDS, REFS)
    # mapped by hand: positive, negative, unmatched, unmatched (two labels), neutral, positive
    mapped = ["positive", "negative", M.UNMATCHED, M.UNMATCHED, "neutral", "positive"]
    assert scores["accuracy"].details["mapped"] == mapped
    p, r, f, support = precision_recall_fscore_support(REFS, mapped, labels=LABELS, zero_division=0)
    assert scores["accuracy"].value == pytest.approx(accuracy_score(REFS, mapped)) == pytest.approx(3 / 6)
    assert scores["precision"].value == pytest.approx(p.mean())
    assert scores["recall"].value == pytest.approx(r.mean())
    assert scores["f1"].value == pytest.approx(f.mean())
    # by hand: negative P=1 R=1/3, neutral P=R=1, positive P=1/2 R=1/2
    assert scores["precision"].value == pytest.approx((1 + 1 + 0.5) / 3)
    assert scores["recall"].value == pytest.approx((1 / 3 + 1 + 0.5) / 3)
    per = scores["f1"].details["per_label"]
    assert per["negative"] == {
        "precision": 1.0,
        "recall": pytest.approx(1 / 3),
        "f1": pytest.approx(0.5),
        "support": 3,
    }
    conf = scores["f1"].details["confusion"]
    assert conf["columns"] == [*LABELS, M.UNMATCHED]
    assert conf["matrix"] == confusion_matrix(REFS, mapped, labels=[*LABELS, M.UNMATCHED])[:3].tolist()
    assert conf["matrix"][0] == [1, 0, 1, 1]  # negative: 1 right, 1 called positive, 1 unmatched
    assert scores["f1"].details["unmatched"] == 2


def test_macro_prf_equals_scikit_learn_on_random_resamples():
    from sklearn.metrics import precision_recall_fscore_support

    scores = M.classification(PREDS, REFS)
    rng = np.random.default_rng(1)
    mapped = np.array(scores["f1"].details["mapped"])
    refs = np.array(REFS)
    for _ in range(20):
        idx = rng.integers(0, len(REFS), len(REFS))
        p, r, f, _ = precision_recall_fscore_support(
            refs[idx], mapped[idx], labels=LABELS, average="macro", zero_division=0
        )
        assert scores["precision"].on(idx) == pytest.approx(p)
        assert scores["recall"].on(idx) == pytest.approx(r)
        assert scores["f1"].on(idx) == pytest.approx(f)


def test_given_labels_keep_their_order_and_must_cover_the_references():
    scores = M.classification(["yes"], ["Yes"], labels=["Yes", "No"])
    assert scores["f1"].details["labels"] == ["yes", "no"]
    with pytest.raises(LmtailorError, match="not among the labels"):
        M.classification(["yes"], ["maybe"], labels=["yes", "no"])


def test_rouge_l_by_hand_english_and_chinese():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 tokens of 6 and 6
    assert M.rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]).value == pytest.approx(5 / 6)
    # by characters: LCS(北京是首都, 北京是中国的首都) = 5; P = 5/5, R = 5/8, F = 10/13
    zh = M.rouge_l(["北京是首都。"], ["北京是中国的首都"])
    assert zh.value == pytest.approx(10 / 13)
    assert M.rouge_l(["x"], ["北京"]).value == 0.0


def test_bleu_and_chrf_match_sacrebleu_and_use_characters_for_chinese():
    import sacrebleu

    preds, refs = ["the cat sat on the mat", "a dog barks"], ["the cat is on the mat", "the dog barks"]
    assert M.bleu(preds, refs).value == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert M.chrf(preds, refs).value == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert M.bleu(["same words here"], ["same words here"]).value == pytest.approx(100)
    zh_pred, zh_ref = ["北京是中国的首都"], ["北京是中国的首都城市"]
    by_chars = sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="zh").score
    assert sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="13a").score == 0  # one "word": what we avoid
    assert M.bleu(zh_pred, zh_ref).value == pytest.approx(by_chars) and by_chars > 50
    assert M.chrf(zh_pred, zh_ref).value > 50


@pytest.mark.parametrize(
    "name", ["exact_match", "contains", "accuracy", "precision", "recall", "f1", "rouge_l", "bleu", "chrf"]
)
def test_every_score_recomputes_its_value_on_all_rows(name):
    s = M.score([name], PREDS, REFS)[name]
    assert len(s.per_example) == len(PREDS)
    assert s.on(np.arange(len(PREDS))) == pytest.approx(s.value)


def test_perplexity_equals_the_models_own_loss_on_the_reference(tiny_llama_dir):
    import torch

    from lmtailor.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir))
    model = load_model(str(tiny_llama_dir), dtype=torch.float32, device="cpu")
    prompts = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "中国的首都是哪里？"}],
    ]
    refs = ["Four.", "北京。"]
    s = M.perplexity(model, tok, prompts, refs, batch_size=2)  # padded together in one batch
    expected_nll, expected_n = 0.0, 0
    for prompt, ref, row_ppl in zip(prompts, refs, s.per_example, strict=True):
        head = tok(
            tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        tail = tok(ref, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        labels = torch.tensor([[-100] * len(head) + tail])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert row_ppl == pytest.approx(math.exp(loss), rel=1e-4)
        expected_nll += loss * len(tail)
        expected_n += len(tail)
    assert s.value == pytest.approx(math.exp(expected_nll / expected_n), rel=1e-4)
    assert not s.higher_is_better


def test_pick_metrics_from_the_references():
    assert M.pick_metrics(REFS) == list(M.CLASSIFICATION)
    assert M.pick_metrics(["正面", "负面", "正面", "负面"]) == list(M.CLASSIFICATION)
    free = ["Paris is the capital of France.", "Four.", "The Pacific Ocean is the largest.", "Red."]
    assert M.pick_metrics(free) == list(M.FREE_TEXT)
    assert M.pick_metrics(["a", "b", "c"]) == list(M.FREE_TEXT)  # each seen once: not a label set


def test_unknown_metric_and_perplexity_without_model():
    with pytest.raises(LmtailorError, match="unknown metric"):
        M.score(["bleurt"], ["a"], ["a"])
    with pytest.raises(LmtailorError, match="local model"):
        M.score(["perplexity"], ["a"], ["a"])
