"""Class weights, in Keras' meaning: each training image's loss times its class's weight.

`optimizer.class_weight` asks for them ("auto", "balanced", "none" or a table {class: weight}); `class_weights`
turns what was asked into one weight per class for this training split, and says why. "balanced" is
scikit-learn's rule, which Keras users pass to `fit(class_weight=...)`: images / (classes x the class's
images), so each class carries the same total weight and the mean weight over the training images is 1 (the
loss keeps its scale). No PyTorch here: the loop makes the weights a tensor.
"""

from dataclasses import dataclass

from smallvision.errors import SmallvisionError, unknown_name

AUTO_RATIO = 2.0  # "auto" balances when the largest training class has at least this many times the smallest's images


@dataclass(frozen=True)
class ClassWeights:
    """One weight per class (None: unweighted), what was asked, and why, in a phrase for training's first line."""

    weights: list[float] | None
    asked: str  # "auto", "balanced", "none" or "table"
    reason: str

    def table(self, class_names: list[str]) -> dict[str, float] | str:
        """As a recipe's class_weight: the table, or "none" (what a run records it trained with)."""
        if self.weights is None:
            return "none"
        return {name: round(weight, 6) for name, weight in zip(class_names, self.weights)}


def class_weights(asked: str | dict[str, float], counts: list[int], class_names: list[str]) -> ClassWeights:
    """The weights for a training split with `counts` images per class (in class order)."""
    present = [count for count in counts if count]
    ratio = max(present) / min(present) if present else 1.0
    if isinstance(asked, dict):
        for name in asked:
            if name not in class_names:
                raise unknown_name("class in optimizer.class_weight", name, class_names)
        # Keras: a class left out of the table weighs 1
        weights = [float(asked.get(name, 1.0)) for name in class_names]
        return ClassWeights(weights, "table", "classes weighted as the recipe's table says")
    if asked == "none" or (asked == "auto" and ratio < AUTO_RATIO):
        why = "" if asked == "none" else f" (auto: the classes are within {AUTO_RATIO:g}x of each other)"
        return ClassWeights(None, asked, f"classes unweighted{why}")
    if asked not in ("auto", "balanced"):
        raise SmallvisionError(f"optimizer.class_weight {asked!r}: give auto, balanced, none or a table of class weights")
    total, number = sum(counts), len(present)
    weights = [total / (number * count) if count else 0.0 for count in counts]
    largest, smallest = counts.index(max(present)), counts.index(min(present))
    why = (f"{class_names[largest]} has {counts[largest]:,} training images, {class_names[smallest]} "
           f"{counts[smallest]:,}")
    return ClassWeights(weights, asked, f"classes balanced ({'auto: ' if asked == 'auto' else ''}{why})")
