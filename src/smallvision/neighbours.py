"""Which images are near each other: near-duplicates (the same picture resized, re-encoded, cropped a little
or brightened) and outliers (far from every other image).

Both come from one nearest-neighbour search over unit feature vectors (cosine similarity), done in blocks so
that memory stays at a block's row of similarities however large the set. A perceptual hash (dHash: the
signs of horizontal brightness steps on a 9x8 thumbnail, 64 bits) confirms a pair whose features are close
but not identical: two photos of two black cats on a sofa can be as close in features as a photo and its
resized copy, but not in their hashes.
"""

from dataclasses import dataclass

import torch

from smallvision.data.imageset import ImageSet
from smallvision.progress import progress_bar

# When two images are one picture. Features alone cannot say it: a resized, re-encoded, cropped and brightened
# copy of a photo sat at 0.82-0.95 cosine similarity from its original on the shared cats-vs-dogs set
# (benchmarks/audit_figures.py: 25 such copies), while two shots of one cat a second apart (different
# pictures) reached 0.79 and 0.84. The pixels tell them apart better: a copy's dHash was 3-13 bits from its
# original's (24 of 25 within 12) and its 8x8 grey thumbnail correlated 0.92-0.99 with the original's (24 of 25),
# where the burst shots were 11 and 13 bits apart at 0.94 and 0.91. So: identical features (SAME), or close
# features (CLOSE) whose hashes are within HASH_BITS and whose thumbnails correlate at THUMBNAIL or above.
SAME = 0.97
CLOSE = 0.80
# Digits have no features but their pixels, and two different handwritten 1s are close in any small picture of
# them: among 20,000 MNIST training digits, 535 had a neighbour at 0.97 (16x16, less their mean) and none at
# 0.99 at full size (the closest, two 1s, 0.987). A pair found at SAME must then be one at full size too.
DIGITS_SAME = 0.99
HASH_BITS = 12
THUMBNAIL = 0.92
NEIGHBOURS = 10  # searched per image: near-duplicates among them, and the outlier score from them


@dataclass
class Neighbours:
    """For each image, its nearest others: similarities [N, k] (descending) and their indices [N, k]."""

    similarity: torch.Tensor
    index: torch.Tensor


def unit_vectors(features: torch.Tensor) -> torch.Tensor:
    """[N, D, ...] features as float32 rows of length 1 (cosine similarity is then a dot product)."""
    flat = features.flatten(1).float()  # not reshape(len(...)): an exported graph keeps its batch axis free
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest(vectors: torch.Tensor, k: int = NEIGHBOURS, block: int = 2048, progress: bool = False) -> Neighbours:
    """Each row's k most similar other rows, a block of rows against all at a time."""
    count = len(vectors)
    k = min(k, count - 1)
    similarity = torch.empty(count, max(k, 0))
    index = torch.empty(count, max(k, 0), dtype=torch.long)
    bar = progress_bar(progress and count > block, total=count, desc="nearest neighbours", unit="img", leave=False)
    for start in range(0, count, block):
        rows = vectors[start:start + block] @ vectors.T
        rows[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -2.0  # not itself
        best = rows.topk(k, dim=1) if k > 0 else None
        if best is not None:
            similarity[start:start + len(rows)], index[start:start + len(rows)] = best.values, best.indices
        bar.update(len(rows))
    bar.close()
    return Neighbours(similarity, index)


@dataclass
class Looks:
    """What each image's pixels look like, small: a 64-bit dHash (int64 [N]) and its 8x8 grey thumbnail less
    its mean, of length 1 ([N, 64]: the dot product of two is their correlation, blind to brightness)."""

    hashes: torch.Tensor
    thumbnails: torch.Tensor

    @classmethod
    def of(cls, images: ImageSet, chunk: int = 1024) -> "Looks":
        """dHash: grey, shrunk to 9x8 by area, one bit per brighter-than-its-right-neighbour step. Brightness
        changes, re-encoding and resizing keep most bits; a different picture flips about half."""
        weights = 1 << torch.arange(64, dtype=torch.long)
        hashes, thumbnails = [], []
        for _, batch in images.chunks(chunk):
            grey = batch.float().mean(1, keepdim=True)
            small = torch.nn.functional.adaptive_avg_pool2d(grey, (8, 9))[:, 0]
            bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(batch), 64).long()
            hashes.append((bits * weights).sum(1))
            thumbnail = torch.nn.functional.adaptive_avg_pool2d(grey, (8, 8)).flatten(1)
            thumbnails.append(unit_vectors(thumbnail - thumbnail.mean(1, keepdim=True)))
        if not hashes:
            return cls(torch.empty(0, dtype=torch.long), torch.empty(0, 64))
        return cls(torch.cat(hashes), torch.cat(thumbnails))

    @classmethod
    def join(cls, parts: list["Looks"]) -> "Looks":
        return cls(torch.cat([part.hashes for part in parts]), torch.cat([part.thumbnails for part in parts]))


def hash_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bits that differ between two int64 hashes, elementwise."""
    differ = a ^ b
    count = torch.zeros_like(differ)
    for bit in range(64):
        count += (differ >> bit) & 1
    return count


def near_duplicate_groups(found: Neighbours, looks: Looks | None = None,
                          full_size: torch.Tensor | None = None) -> list[list[tuple[int, float]]]:
    """Groups of images that are one picture: pairs among each image's neighbours at SAME or above, or at
    CLOSE or above that also look alike (hashes within HASH_BITS, thumbnails correlated at THUMBNAIL), joined
    into groups (a chain of pairs is one group). Digits (their features are small pictures of their pixels)
    give `full_size` instead, their unit pixel vectors: a pair at SAME must be at DIGITS_SAME there too. Each
    group as (index, its highest similarity to another member), most similar first; groups by their best pair."""
    count, k = found.index.shape
    first = torch.arange(count).repeat_interleave(k)
    second, similarity = found.index.reshape(-1), found.similarity.reshape(-1)
    paired = similarity >= SAME
    if full_size is not None:
        candidates = paired.nonzero().flatten()
        a, b = first[candidates], second[candidates]
        paired[candidates[(full_size[a] * full_size[b]).sum(1) < DIGITS_SAME]] = False
    if looks is not None and len(looks.hashes):
        close = ((similarity >= CLOSE) & ~paired).nonzero().flatten()
        a, b = first[close], second[close]
        alike = (hash_distance(looks.hashes[a], looks.hashes[b]) <= HASH_BITS) \
            & ((looks.thumbnails[a] * looks.thumbnails[b]).sum(1) >= THUMBNAIL)
        paired[close[alike]] = True
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, float] = {}
    for a, b, value in zip(first[paired].tolist(), second[paired].tolist(), similarity[paired].tolist()):
        parent[root(a)] = root(b)
        best[a], best[b] = max(best.get(a, -1.0), value), max(best.get(b, -1.0), value)
    groups: dict[int, list[tuple[int, float]]] = {}
    for member, value in best.items():
        groups.setdefault(root(member), []).append((member, value))
    ordered = [sorted(group, key=lambda item: (-item[1], item[0])) for group in groups.values()]
    return sorted(ordered, key=lambda group: (-group[0][1], group[0][0]))


def outlier_scores(found: Neighbours) -> torch.Tensor:
    """How far each image is from its nearest others: 1 - the mean cosine similarity to its neighbours."""
    return 1.0 - found.similarity.mean(1)


def outliers(scores: torch.Tensor, cutoff: float = 3.5, most: int = 100) -> list[int]:
    """The images whose score stands out from the rest: a robust z-score (by the median and the median
    absolute deviation) above `cutoff`, the farthest first, at most `most`."""
    if len(scores) < 3:
        return []
    median = scores.median()
    spread = (scores - median).abs().median().clamp_min(1e-6) * 1.4826  # the MAD as a standard deviation
    z = (scores - median) / spread
    chosen = (z > cutoff).nonzero().flatten()
    return chosen[scores[chosen].argsort(descending=True)][:most].tolist()
