import pytest
import torch

from smallvision.metrics import (
    average_ranks,
    classification_metrics,
    confusion_matrix,
    format_classification_report,
    most_confident_mistakes,
    roc_auc,
)


def one_hot_probabilities(predicted: list[int], classes: int, confidence: float = 0.8) -> torch.Tensor:
    p = torch.full((len(predicted), classes), (1 - confidence) / (classes - 1))
    p[torch.arange(len(predicted)), torch.tensor(predicted)] = confidence
    return p


def test_metrics_match_a_confusion_computed_by_hand():
    # true:      a a a a b b b c c c
    # predicted: a a a b b b a c c b
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = [0, 0, 0, 1, 1, 1, 0, 2, 2, 1]
    metrics = classification_metrics(labels, one_hot_probabilities(predicted, 3), ["a", "b", "c"])
    assert metrics["confusion"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert metrics["accuracy"] == pytest.approx(0.7)
    a, b, c = (metrics["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4), 4)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 4), pytest.approx(2 / 3))
    assert b["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert (c["precision"], c["recall"], c["f1"]) == (pytest.approx(1.0), pytest.approx(2 / 3), pytest.approx(0.8))
    assert metrics["macro_avg"]["recall"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert metrics["weighted_avg"]["recall"] == pytest.approx(0.7)  # weighted recall is accuracy
    assert metrics["weighted_avg"]["precision"] == pytest.approx((4 * 3 / 4 + 3 * 2 / 4 + 3 * 1.0) / 10)
    # every image's own class got 0.8 when right and 0.1 when wrong
    assert metrics["loss"] == pytest.approx(-(7 * torch.tensor(0.8).log() + 3 * torch.tensor(0.1).log()).item() / 10)
    assert "roc_auc" not in metrics and "top5_accuracy" not in metrics
    text = format_classification_report(metrics)
    assert "macro avg" in text and "rows: true" in text


def test_a_class_never_predicted_scores_zero_precision_not_nan():
    metrics = classification_metrics(torch.tensor([0, 1]), one_hot_probabilities([0, 0], 2), ["x", "y"])
    assert metrics["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_roc_auc_counts_ties_as_half_and_needs_both_classes():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert roc_auc(torch.tensor([0.2, 0.9]), torch.tensor([1, 1])) is None
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    two = classification_metrics(torch.tensor([0, 0, 1, 1]), torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]]),
                                 ["neg", "pos"])
    assert two["roc_auc"] == pytest.approx(0.75)


def test_top5_accuracy_beyond_five_classes():
    probabilities = torch.softmax(torch.arange(7.0).repeat(3, 1), 1)  # class 6 first, then 5, 4, 3, 2
    metrics = classification_metrics(torch.tensor([2, 1, 6]), probabilities, list("abcdefg"))
    assert metrics["top5_accuracy"] == pytest.approx(2 / 3) and metrics["accuracy"] == pytest.approx(1 / 3)


def test_the_most_confident_mistakes_come_first():
    labels = torch.tensor([0, 0, 1, 1, 0])
    probabilities = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.4, 0.6]])
    assert most_confident_mistakes(labels, probabilities, 5) == [2, 0, 4]
    assert most_confident_mistakes(labels, probabilities, 2) == [2, 0]
    assert confusion_matrix(labels, probabilities.argmax(1), 2).tolist() == [[1, 2], [1, 1]]


def test_the_text_confusion_numbers_its_columns_when_a_name_is_long():
    from smallvision.metrics import format_confusion
    short = format_confusion([[5, 1], [0, 4]], ["cats", "dogs"]).splitlines()
    assert short[1].split() == ["cats", "dogs"] and short[2].split() == ["cats", "5", "1"]
    long = format_confusion([[0, 2], [0, 4]], ["chat noir", "golden retriever"]).splitlines()
    assert "by number" in long[0] and long[1].split() == ["0", "1"]
    assert long[2].split() == ["0", "chat", "noir", "0", "2"] and long[3].split() == ["1", "golden", "retriever", "0", "4"]
