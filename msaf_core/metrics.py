"""Confusion matrices, IoU and temporal consistency (no ROS, no training code)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

IGNORE = 255


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int,
              ignore_index: int = IGNORE) -> np.ndarray:
    """(K, K) int64 matrix, rows = target class, columns = predicted class.

    Pixels whose target is ``ignore_index`` are left out. Targets or predictions outside
    0..K-1 (other than the ignored value) raise ``ValueError``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    t = target.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target holds values outside 0..{num_classes - 1} and {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction holds values outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN where the class is absent from both."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean over classes of IoU, ignoring classes absent from both target and prediction."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def summarize(cm: np.ndarray, class_names: Sequence[str]) -> Dict[str, object]:
    iou = iou_per_class(cm)
    return {
        "miou": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
    }


def format_table(summary: Dict[str, object], title: str = "") -> str:
    lines = [title] if title else []
    iou = summary["iou"]
    assert isinstance(iou, dict)
    width = max(len(n) for n in iou) + 2
    for n, v in iou.items():
        lines.append(f"  {n:<{width}}{'   n/a' if v is None else f'{100 * v:6.2f}'}")
    lines.append(f"  {'mIoU':<{width}}{100 * float(summary['miou']):6.2f}")  # type: ignore[arg-type]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# Temporal consistency (Lai et al. 2018, computed as in ETC)
# -------------------------------------------------------------------------------------------
class TemporalConsistency:
    """Accumulates TC over consecutive frame pairs.

    For frames t and t+1, optical flow from t to t+1 (OpenCV DIS, no learned weights) maps
    each pixel of t into t+1; the prediction of t+1 is sampled there (nearest neighbour),
    i.e. warped back to t, and compared with the prediction of t. TC is the mIoU of the
    confusion matrix accumulated over all pairs. Pixels that flow out of the frame are skipped.
    """

    method = "OpenCV DIS optical flow (preset MEDIUM), nearest-neighbour warp"

    def __init__(self, num_classes: int) -> None:
        try:
            import cv2
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("temporal consistency needs OpenCV: pip install "
                              "opencv-python-headless (or the [eval] extra)") from e
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.k = num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)
        self.pairs = 0

    def flow(self, img_t: np.ndarray, img_t1: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        g0 = cv2.cvtColor(img_t, cv2.COLOR_RGB2GRAY)
        g1 = cv2.cvtColor(img_t1, cv2.COLOR_RGB2GRAY)
        return self._dis.calc(g0, g1, None)  # (H, W, 2): x, y displacement t → t+1

    def add(self, img_t: np.ndarray, img_t1: np.ndarray, pred_t: np.ndarray,
            pred_t1: np.ndarray, flow: Optional[np.ndarray] = None) -> None:
        if flow is None:
            flow = self.flow(img_t, img_t1)
        warped = warp_nearest(pred_t1, flow)       # IGNORE where the flow leaves the frame
        self.cm += confusion(pred_t, warped, self.k, ignore_index=IGNORE)
        self.pairs += 1

    def value(self) -> float:
        return mean_iou(self.cm)


def warp_nearest(labels_t1: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``labels_t1`` at x + flow(x) with nearest neighbour; IGNORE outside the frame."""
    h, w = labels_t1.shape
    ys, xs = np.mgrid[0:h, 0:w]
    x1 = np.rint(xs + flow[..., 0]).astype(np.int64)
    y1 = np.rint(ys + flow[..., 1]).astype(np.int64)
    inside = (x1 >= 0) & (x1 < w) & (y1 >= 0) & (y1 < h)
    out = np.full((h, w), IGNORE, np.uint8)
    out[inside] = labels_t1[y1[inside], x1[inside]]
    return out
