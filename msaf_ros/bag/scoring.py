"""Scoring msaf-bag's predictions against ground-truth label images in the same bag.

A label image is matched to the prediction whose input frame has the same header stamp and
frame_id, whichever of the two comes first in the bag; each waits for the other only when
pass 1 saw its partner (:class:`~msaf_ros.bag.plan.Plan`'s keys). Ground-truth values
>= the model's class count (CamVid's void = 11) and 255 are ignored. No rclpy.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Set

import numpy as np

from msaf_core.metrics import IGNORE, confusion, summarize

from .io import Key


class Scorer:
    """The confusion matrix of matched (prediction, ground truth) pairs, and the counts."""

    def __init__(self, num_classes: int, frame_keys: Set[Key], gt_keys: Set[Key],
                 warn: Callable[[str], None]) -> None:
        self.k = int(num_classes)
        self.frame_keys, self.gt_keys, self.warn = frame_keys, gt_keys, warn
        self.cm = np.zeros((self.k, self.k), np.int64)
        self.matched = 0            # ground-truth images scored against a prediction
        self.dropped = 0            # undecodable, or of another size than the frame
        self.void = self.pixels = 0
        self._scored: Set[Key] = set()
        self._waiting_pred: Dict[Key, np.ndarray] = {}     # predictions awaiting their GT
        self._waiting_gt: Dict[Key, np.ndarray] = {}       # GT awaiting its prediction

    def prediction(self, key: Key, labels: np.ndarray) -> None:
        gt = self._waiting_gt.pop(key, None)
        if gt is not None:
            self._score(labels, gt, key)
        elif key in self.gt_keys and key not in self._scored:
            self._waiting_pred[key] = labels

    def ground_truth(self, key: Key, gt: np.ndarray) -> None:
        pred = self._waiting_pred.pop(key, None)
        if pred is not None:
            self._score(pred, gt, key)
        elif key in self.frame_keys and key not in self._scored:
            self._waiting_gt[key] = gt          # its frame comes later (or is dropped)

    def _score(self, pred: np.ndarray, gt: np.ndarray, key: Key) -> None:
        if pred.shape != gt.shape:
            self.dropped += 1
            self.warn(f"ground truth at stamp {key[0]} is {gt.shape[1]}x{gt.shape[0]}, the "
                      f"frame {pred.shape[1]}x{pred.shape[0]}; not scored")
            return
        self._scored.add(key)
        void = gt >= self.k
        self.cm += confusion(pred, np.where(void, IGNORE, gt).astype(np.uint8), self.k,
                             ignore_index=IGNORE)
        self.void += int(void.sum())
        self.pixels += void.size
        self.matched += 1

    @property
    def void_fraction(self) -> float:
        return self.void / self.pixels if self.pixels else float("nan")

    def summary(self, class_names: Sequence[str]) -> Optional[Dict[str, Any]]:
        """msaf_core.metrics.summarize of the matched pairs (None when none matched)."""
        return summarize(self.cm, class_names) if self.matched else None
