"""Classification metrics from labels and predicted probabilities: pure arithmetic, no model, no files."""

import torch


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted] as int64 [classes, classes]."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """precision, recall, f1 and support per class; 0 where a ratio has nothing to divide by."""
    confusion = confusion.double()
    hits = confusion.diag()
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp_min(1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp_min(1), torch.zeros_like(hits))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-12), torch.zeros_like(hits))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Area under the ROC curve: the chance that a random positive outranks a random negative (ties
    count half), from the ranks (Mann-Whitney U). None when one class is absent."""
    positives = positives.bool()
    count_positive, count_negative = int(positives.sum()), int((~positives).sum())
    if not count_positive or not count_negative:
        return None
    ranks = average_ranks(scores.double())
    u = ranks[positives].sum() - count_positive * (count_positive + 1) / 2
    return float(u / (count_positive * count_negative))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = values.argsort()
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    start = 0
    n = len(values)
    boundaries = torch.nonzero(sorted_values[1:] != sorted_values[:-1]).flatten().tolist() + [n - 1]
    for end in boundaries:
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def log_loss(labels: torch.Tensor, probabilities: torch.Tensor) -> float:
    """The mean negative log-probability of each image's true class, clipped at 1e-7 as Keras clips."""
    if not len(labels):
        return 0.0
    picked = probabilities[torch.arange(len(labels)), labels.long()].clamp_min(1e-7)
    return float(-picked.double().log().mean())


BINS = 15  # the expected calibration error's equal-width bins of top probability


def bin_sums(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """float64 [3, bins]: per bin of top probability, the images, their summed top probability, the right
    answers. Sums, so that several processes' shares add up."""
    confidence, predicted = probabilities.float().max(1)
    where = (confidence * bins).long().clamp(0, bins - 1)  # 1.0 in the last bin
    sums = torch.zeros(3, bins, dtype=torch.float64)
    sums[0].index_add_(0, where, torch.ones_like(confidence, dtype=torch.float64))
    sums[1].index_add_(0, where, confidence.double())
    sums[2].index_add_(0, where, (predicted == labels.long()).double())
    return sums


def ece_of(sums: torch.Tensor) -> float:
    """The expected calibration error from `bin_sums`."""
    total = float(sums[0].sum())
    if not total:
        return 0.0
    return float((sums[1] - sums[2]).abs().sum() / total)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    return ece_of(bin_sums(probabilities, labels, bins))


def classification_metrics(labels: torch.Tensor, probabilities: torch.Tensor, class_names: list[str]) -> dict:
    """Everything `evaluate` reports: accuracy, balanced accuracy, log loss, per-class precision/recall/F1/support with macro
    and weighted averages, the confusion matrix, ROC AUC for two classes, top-5 accuracy beyond five."""
    labels = labels.long().cpu()
    probabilities = probabilities.float().cpu()
    num_classes = len(class_names)
    predicted = probabilities.argmax(1)
    confusion = confusion_matrix(labels, predicted, num_classes)
    scores = per_class_scores(confusion)
    support = scores["support"]
    total = support.sum().clamp_min(1)
    result = {
        "images": len(labels),
        "accuracy": float((predicted == labels).double().mean()) if len(labels) else 0.0,
        # the mean recall over the classes present: accuracy as if every class were as common (imbalance shows)
        "balanced_accuracy": float(scores["recall"][support > 0].mean()) if bool((support > 0).any()) else 0.0,
        "loss": log_loss(labels, probabilities),
        # whether a probability of 0.9 is right 90% of the time (0: perfectly; calibration.py mends it)
        "ece": expected_calibration_error(probabilities, labels) if len(labels) else 0.0,
        "per_class": {name: {key: float(values[i]) if key != "support" else int(values[i])
                             for key, values in scores.items()} for i, name in enumerate(class_names)},
        "macro_avg": {key: float(scores[key].mean()) for key in ("precision", "recall", "f1")},
        "weighted_avg": {key: float((scores[key] * support).sum() / total) for key in ("precision", "recall", "f1")},
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }
    if num_classes == 2:
        result["roc_auc"] = roc_auc(probabilities[:, 1], labels == 1)
    if num_classes > 5:
        top5 = probabilities.topk(5, dim=1).indices
        result["top5_accuracy"] = float((top5 == labels[:, None]).any(1).double().mean())
    return result


def most_confident_mistakes(labels: torch.Tensor, probabilities: torch.Tensor, count: int) -> list[int]:
    """Indices of up to `count` wrongly classified images, the most confidently wrong first."""
    confidence, predicted = probabilities.max(1)
    wrong = torch.nonzero(predicted != labels.long()).flatten()
    ranked = wrong[confidence[wrong].argsort(descending=True, stable=True)]
    return ranked[:count].tolist()


def format_classification_report(metrics: dict) -> str:
    """The per-class table and averages, sklearn-style, then the confusion matrix, as text."""
    names = metrics["class_names"]
    width = max(12, *(len(name) for name in names))
    lines = [f"{'':<{width}}  precision  recall  f1-score  support"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:8.4f}  {row['support']:7d}")
    lines.append("")
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        row = metrics[key]
        lines.append(f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:8.4f}  {metrics['images']:7d}")
    lines.append("")
    summary = [f"accuracy {metrics['accuracy']:.4f}"]
    if "balanced_accuracy" in metrics:  # an evaluation written before it had none
        summary.append(f"balanced accuracy {metrics['balanced_accuracy']:.4f}")
    summary.append(f"log loss {metrics['loss']:.4f}")
    if "ece" in metrics:
        summary.append(f"calibration error (ECE) {metrics['ece']:.4f}")
    if "unknown_rate" in metrics:
        summary.append(f"called unknown {metrics['unknown_rate']:.1%}")
    if metrics.get("roc_auc") is not None:
        summary.append(f"ROC AUC {metrics['roc_auc']:.4f}")
    if "top5_accuracy" in metrics:
        summary.append(f"top-5 accuracy {metrics['top5_accuracy']:.4f}")
    lines += ["  ".join(summary), "", format_confusion(metrics["confusion"], names)]
    return "\n".join(lines)


def format_confusion(confusion: list[list[int]], names: list[str]) -> str:
    """Rows are the true classes, columns the predicted ones. Columns are headed by the class names when
    they are short; otherwise by number, with each row's number before its name."""
    numbered = any(len(name) > 8 for name in names)
    headers = [str(i) for i in range(len(names))] if numbered else names
    rows = [f"{i:>{len(str(len(names) - 1))}} {name}" for i, name in enumerate(names)] if numbered else names
    cell = max(6, *(len(header) for header in headers), *(len(str(v)) for row in confusion for v in row))
    label_width = max(len(row) for row in rows)
    lines = [f"confusion (rows: true, columns: predicted{', by number' if numbered else ''})",
             f"{'':<{label_width}}  " + " ".join(f"{header:>{cell}}" for header in headers)]
    for label, row in zip(rows, confusion):
        lines.append(f"{label:<{label_width}}  " + " ".join(f"{value:>{cell}}" for value in row))
    return "\n".join(lines)
