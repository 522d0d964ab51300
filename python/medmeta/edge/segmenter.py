"""EdgeSegmenter: few-shot segmentation on a device, with numpy and onnxruntime only.

A segmenter exported by :func:`medmeta.export.export_segmenter` is two files:

* ``<stem>.encoder.onnx``: images ``x [n, C, H, W]`` -> ``features [n, D, h, w]`` (the
  learner's dense encoder; batch axis dynamic, ``H, W`` fixed to the metadata's
  ``input_shape``: the preprocessing resizes every raw image to it);
* ``<stem>.head.onnx``: ``(features, prototypes [P, D], prototype_onehot [P, N+1])`` ->
  ``logits [n, N+1, H, W]`` (bilinear, half-pixel, as torch's ``align_corners=False``) and
  ``labels [n, H, W]`` int64. Class c's score at a cell is the softmax-weighted mean of the
  scaled cosine similarities to c's prototypes (ALPNet, Ouyang et al. 2020; one prototype
  per class gives PANet's ``scale * cos``, Wang et al. 2019); with ADNet's threshold
  (Hansen et al. 2022) the background scores a learned constant instead.

The device **enrols** classes from support images with label maps (0 = background,
``k`` = ``class_names[k]``): the encoder's support features are pooled into prototypes in
numpy exactly as :mod:`medmeta.algorithms._seg_prototypes` does in training:

* soft masks: each label map's one-hot, area-pooled onto the ``h x w`` feature grid, is
  ``F.adaptive_avg_pool2d`` to the last bit (integer pixel counts over each adaptive bin,
  then ``/ bin height / bin width`` in float32);
* class prototypes: masked average pooling (``ops.masked_prototypes``);
* local prototypes (ALPNet): ``window x window`` blocks of the grid covered to at least
  ``threshold`` by a class, at most ``max_local`` per class (the largest coverage first,
  ties in (shot, window) order), and a class prototype for a class without any block.

Which classes get which prototypes is the export's :class:`PoolingRule`. Coverages are
exact for grids whose adaptive bins are powers of two (e.g. 128 x 128 inputs, stride 8);
for other geometries a coverage within float32 rounding of ``threshold`` may be decided
differently from PyTorch (whose sums round in its own order).

Enrolment keeps the support features and soft masks, so new images of a class join the
old ones (``replace=False``: the prototypes are pooled over all of them) or drop them
(``replace=True``). Classes exported without their support set keep their exported
prototypes until re-enrolled with ``replace=True``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medmeta.edge.preprocess import Preprocessing, model_inputs
from medmeta.edge.runtime import _read_bytes, check_threads, cpu_session, open_onnx
from medmeta.edge.schema import EdgeModelError, decode_array, session_metadata
from medmeta.edge.weights import check_weights

__all__ = [
    "EdgeSegmenter",
    "PoolingRule",
    "SegmentationEnrolment",
    "local_prototypes",
    "pool_prototypes",
    "soft_masks",
    "window_masks",
]

logger = logging.getLogger(__name__)

ENCODER_ROLE, HEAD_ROLE = "encoder", "segmentation_head"
HEAD_INPUTS = ["features", "prototypes", "prototype_onehot"]
HEAD_OUTPUTS = ["logits", "labels"]
#: Largest relative gap between the exported prototypes and those the device pools again
#: from the exported support set (float32 summation order only).
RELOAD_TOLERANCE = 1e-4

# ------------------------------------------------------------------------ pooling (numpy)


def _pool_bins(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling bins of one axis: a ``[size_out, size_in]`` 0/1 matrix and the bin
    lengths ``[size_out]`` (bin i: ``[floor(i in / out), ceil((i + 1) in / out))``)."""
    start = (np.arange(size_out) * size_in) // size_out
    end = -((-(np.arange(size_out) + 1) * size_in) // size_out)
    pos = np.arange(size_in)
    member = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])
    return member.astype(np.float64), (end - start).astype(np.float32)


def soft_masks(labels: np.ndarray, classes: int, size: tuple[int, int]) -> np.ndarray:
    """Label maps ``[S, H, W]`` (ints in ``0..classes-1``) -> the coverage of each cell of an
    ``h x w`` grid by each class, ``[S, classes, h, w]`` float32.

    Equal to ``F.adaptive_avg_pool2d(F.one_hot(labels).permute(0, 3, 1, 2).float(), size)``
    bit for bit: exact pixel counts per bin, divided by the bin's height, then its width.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected label maps [S, H, W], got shape {list(labels.shape)}")
    (h, w), (H, W) = size, labels.shape[1:]
    ry, ly = _pool_bins(H, h)
    rx, lx = _pool_bins(W, w)
    one_hot = (labels[:, None] == np.arange(classes)[None, :, None, None]).astype(np.float64)
    counts = np.matmul(np.matmul(ry, one_hot), rx.T)  # exact integers [S, classes, h, w]
    return counts.astype(np.float32) / ly[:, None] / lx[None, :]


def window_masks(h: int, w: int, window: int) -> np.ndarray:
    """Indicator of each ``window x window`` block of an ``h x w`` grid, ``[G, h, w]``
    float32, blocks in row-major order (edge blocks are smaller)."""
    gw = -(-w // window)
    block = (np.arange(h) // window)[:, None] * gw + (np.arange(w) // window)[None, :]
    count = -(-h // window) * gw
    return (block[None] == np.arange(count)[:, None, None]).astype(np.float32)


def _masked_average(features: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``features [S, D, h, w]``, masks ``[S, P, h, w]`` -> ``[P, D]`` float32 masked means
    (``ops.masked_prototypes``), summed in float64."""
    f = features.astype(np.float64)
    m = masks.astype(np.float64)
    sums = np.einsum("sdhw,sphw->pd", f, m)
    return (sums / m.sum((0, 2, 3))[:, None]).astype(np.float32)


def local_prototypes(
    features: np.ndarray,
    masks: np.ndarray,
    classes: Sequence[int],
    *,
    window: int,
    threshold: float,
    max_local: int,
) -> tuple[np.ndarray, np.ndarray]:
    """ALPNet's local prototypes of ``classes`` (``_seg_prototypes.local_prototypes``).

    ``features [S, D, h, w]``, soft masks ``[S, C, h, w]`` -> ``(prototypes [P, D], owner
    [P])``: per class (in the order given) the blocks covered to ``>= threshold``, at most
    ``max_local`` (largest coverage first, ties in (shot, window) order), kept in (shot,
    window) order.
    """
    S, _, h, w = masks.shape
    cells = window_masks(h, w, window)  # [G, h, w]
    size = cells.sum((1, 2))  # [G]
    G = len(cells)
    chosen, owners = [], []
    for c in classes:
        covered = np.einsum("shw,ghw->sg", masks[:, c].astype(np.float64), cells)
        flat = (covered.astype(np.float32) / size).ravel()
        keep = np.flatnonzero(flat >= np.float32(threshold))
        if len(keep) > max_local:  # largest first; stable, so ties stay in (shot, window) order
            order = np.argsort(-flat[keep], kind="stable")
            keep = np.sort(keep[order[:max_local]])
        for k in keep:
            s, g = divmod(int(k), G)
            m = np.zeros((S, h, w), np.float32)
            m[s] = masks[s, c] * cells[g]
            chosen.append(m)
            owners.append(int(c))
    if not owners:
        return np.zeros((0, features.shape[1]), np.float32), np.zeros(0, np.int64)
    return _masked_average(features, np.stack(chosen, 1)), np.asarray(owners, np.int64)


def pool_prototypes(
    features: np.ndarray,
    masks: np.ndarray,
    *,
    global_classes: Sequence[int],
    local_classes: Sequence[int] = (),
    window: int = 4,
    threshold: float = 0.95,
    max_local: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Local prototypes of ``local_classes``, then class prototypes of ``global_classes``
    (plus a local class without any block), as ``_seg_prototypes.pool_prototypes``:
    ``features [S, D, h, w]``, ``masks [S, C, h, w]`` -> ``(prototypes [P, D], owner [P])``.
    """
    protos = [np.zeros((0, features.shape[1]), np.float32)]
    owners = [np.zeros(0, np.int64)]
    missing: set[int] = set()
    if local_classes:
        p, o = local_prototypes(
            features, masks, list(local_classes),
            window=window, threshold=threshold, max_local=max_local,
        )  # fmt: skip
        protos.append(p)
        owners.append(o)
        missing = set(local_classes) - set(o.tolist()) - set(global_classes)
    wanted = sorted(set(global_classes) | missing)
    if wanted:
        protos.append(_masked_average(features, masks[:, wanted]))
        owners.append(np.asarray(wanted, np.int64))
    return np.concatenate(protos), np.concatenate(owners)


@dataclass(frozen=True)
class PoolingRule:
    """Which classes get which prototypes, as the exported learner pools them.

    Attributes:
        global_classes: ``"all"`` (background included: PANet) or ``"foreground"`` (ALPNet).
        local_classes: ``"all"`` (ALPNet's local prototypes for every class) or ``"none"``.
        window, threshold, max_local: ALPNet's local pooling (used with local prototypes).

    The background has no prototypes when neither rule includes it (ADNet's threshold).
    """

    global_classes: str = "all"
    local_classes: str = "none"
    window: int = 4
    threshold: float = 0.95
    max_local: int = 20

    def __post_init__(self) -> None:
        if self.global_classes not in ("all", "foreground"):
            raise ValueError(
                f"PoolingRule: 'global_classes' must be 'all' or 'foreground', got "
                f"{self.global_classes!r}"
            )
        if self.local_classes not in ("all", "none"):
            raise ValueError(
                f"PoolingRule: 'local_classes' must be 'all' or 'none', got {self.local_classes!r}"
            )
        for name in ("window", "max_local"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PoolingRule: '{name}' must be a positive int, got {value!r}")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"PoolingRule: 'threshold' must lie in (0, 1], got {self.threshold}")
        object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def background_prototypes(self) -> bool:
        """Whether the background (class 0) has prototypes."""
        return self.global_classes == "all" or self.local_classes == "all"

    def pool(
        self, features: np.ndarray, masks: np.ndarray, classes: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prototypes ``[P, D]`` and owners ``[P]`` of ``classes`` (those with support mass)
        from ``features [S, D, h, w]`` and soft masks ``[S, C, h, w]``."""
        chosen = [c for c in classes if c > 0 or self.background_prototypes]
        glob = chosen if self.global_classes == "all" else [c for c in chosen if c > 0]
        local = chosen if self.local_classes == "all" else []
        return pool_prototypes(
            features, masks, global_classes=glob, local_classes=local,
            window=self.window, threshold=self.threshold, max_local=self.max_local,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "global_classes": self.global_classes,
            "local_classes": self.local_classes,
            "window": self.window,
            "threshold": self.threshold,
            "max_local": self.max_local,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolingRule:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(data) - set(cls().to_dict()))
        if unknown:
            raise ValueError(f"PoolingRule.from_dict: unknown keys {unknown}")
        return cls(**dict(data))


# ------------------------------------------------------------------------- enrolment state


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class SegmentationEnrolment:
    """One consistent enrolment of an :class:`EdgeSegmenter` (arrays are read-only).

    Attributes:
        class_names: ``N+1`` names, the background at 0 (label k = ``class_names[k]``).
        prototypes: ``[P, D]`` float32; ``prototype_classes``: ``[P]`` int64 class of each.
        features: ``[S, D, h, w]`` float32 stored support features (``S`` may be 0).
        masks: ``[S, N+1, h, w]`` float32 their soft masks (class coverage of each cell).
        fixed_classes: classes whose prototypes were exported without support images.
    """

    class_names: tuple[str, ...]
    prototypes: np.ndarray
    prototype_classes: np.ndarray
    features: np.ndarray
    masks: np.ndarray
    fixed_classes: frozenset[int]

    @property
    def onehot(self) -> np.ndarray:
        """``[P, N+1]`` float32: row p is the one-hot of ``prototype_classes[p]``."""
        return np.eye(len(self.class_names), dtype=np.float32)[self.prototype_classes]

    @property
    def support_images(self) -> np.ndarray:
        """Stored support images per class ``[N+1]`` (those covering some cell)."""
        if len(self.masks) == 0:
            return np.zeros(len(self.class_names), np.int64)
        return (self.masks.sum((2, 3)) > 0).sum(0).astype(np.int64)


def build_enrolment(
    class_names: Sequence[str],
    features: np.ndarray,
    masks: np.ndarray,
    rule: PoolingRule,
    fixed: tuple[np.ndarray, np.ndarray] | None = None,
) -> SegmentationEnrolment:
    """Pool the prototypes of every class with support mass (in training's order), then
    append the ``fixed = (prototypes [F, D], classes [F])`` of the other classes.

    Raises:
        ValueError: a class that needs prototypes has neither support pixels nor fixed ones.
    """
    K = len(class_names)
    mass = masks.sum((0, 2, 3)) if len(masks) else np.zeros(K, np.float32)
    pooled = [c for c in range(K) if mass[c] > 0]
    protos, owner = rule.pool(features, masks, pooled) if pooled else (None, None)
    parts_p = [] if protos is None else [protos]
    parts_o = [] if owner is None else [owner]
    kept: set[int] = set()
    if fixed is not None:
        keep = ~np.isin(fixed[1], pooled)
        parts_p.append(fixed[0][keep])
        parts_o.append(fixed[1][keep])
        kept = set(fixed[1][keep].tolist())
    prototypes = np.concatenate(parts_p) if parts_p else np.zeros((0, 1), np.float32)
    classes = np.concatenate(parts_o).astype(np.int64) if parts_o else np.zeros(0, np.int64)
    needed = range(0 if rule.background_prototypes else 1, K)
    lacking = [class_names[c] for c in needed if c not in set(classes.tolist())]
    if lacking:
        raise ValueError(f"classes {lacking} have no support pixel and no exported prototype")
    return SegmentationEnrolment(
        tuple(class_names), _frozen(prototypes), _frozen(classes), _frozen(features),
        _frozen(masks), frozenset(kept),
    )  # fmt: skip


# ------------------------------------------------------------------------------- loading


def _check_session(
    session: ort.InferenceSession, inputs: list[str], outputs: list[str], source: str
) -> None:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != inputs or got_out != outputs:
        raise EdgeModelError(
            f"{source}: graph inputs {got_in} / outputs {got_out} differ from the expected "
            f"{inputs} / {outputs}"
        )


def _decode_support(enrol: Mapping[str, Any], K: int, D: int) -> tuple[np.ndarray, np.ndarray]:
    """The exported support features ``[S, D, h, w]`` and soft masks ``[S, K, h, w]``."""
    if not enrol.get("support_features"):
        return np.zeros((0, D, 1, 1), np.float32), np.zeros((0, K, 1, 1), np.float32)
    feats = decode_array(enrol["support_features"], "enrolment.support_features")
    masks = decode_array(enrol["support_masks"], "enrolment.support_masks")
    if feats.ndim != 4 or feats.shape[1] != D or masks.shape != (len(feats), K, *feats.shape[2:]):
        raise EdgeModelError(
            f"support features {list(feats.shape)} and masks {list(masks.shape)} do not fit "
            f"[S, {D}, h, w] and [S, {K}, h, w]"
        )
    return feats.astype(np.float32), masks.astype(np.float32)


def _initial_enrolment(meta: Mapping[str, Any], rule: PoolingRule) -> SegmentationEnrolment:
    """The exported enrolment, its pooled part checked against the stored support set."""
    enrol = meta["enrolment"]
    names = meta["class_names"]
    protos = decode_array(enrol["prototypes"], "enrolment.prototypes").astype(np.float32)
    classes = np.asarray(enrol["prototype_classes"], np.int64)
    if protos.ndim != 2 or classes.shape != (len(protos),) or len(protos) == 0:
        raise EdgeModelError(f"prototypes {list(protos.shape)} do not match their classes")
    if protos.shape[1] != meta["feature_dim"]:
        raise EdgeModelError(
            f"prototypes of size {protos.shape[1]} in a feature space of {meta['feature_dim']}"
        )
    if classes.min() < 0 or classes.max() >= len(names):
        raise EdgeModelError(f"prototype classes outside 0..{len(names) - 1}")
    feats, masks = _decode_support(enrol, len(names), protos.shape[1])
    state = build_enrolment(names, feats, masks, rule, (protos, classes))
    if len(feats):  # the device must be able to pool the exported prototypes again
        pooled = ~np.isin(classes, sorted(state.fixed_classes))
        want, got = protos[pooled], state.prototypes[: int(pooled.sum())]
        same = np.array_equal(classes[pooled], state.prototype_classes[: len(want)])
        gap = float(np.abs(want - got).max()) if same and len(want) else 0.0
        if not same or gap > RELOAD_TOLERANCE * max(1.0, float(np.abs(want).max())):
            raise EdgeModelError(
                "the exported prototypes are not what pooling the exported support set gives "
                f"(classes equal: {same}, largest gap {gap:.3g}); tampered or inconsistent"
            )
    # predictions right after loading use the exported numbers themselves
    return SegmentationEnrolment(
        state.class_names, _frozen(protos), _frozen(classes), state.features, state.masks,
        state.fixed_classes,
    )  # fmt: skip


class EdgeSegmenter:
    """A few-shot segmenter on a device (numpy + onnxruntime; see the module docstring).

    Args:
        path: the ``<stem>.encoder.onnx`` file; its head is found beside it by the name and
            SHA-256 its metadata records.
        threads: intra-op threads of onnxruntime (``None``: its default).

    Raises:
        FileNotFoundError: the encoder or its head does not exist.
        EdgeModelError: a corrupt or foreign file, a head whose SHA-256 or encoder hash
            differs from the recorded ones, graphs that do not match the metadata, or an
            exported enrolment that the device cannot reproduce.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        check_threads(threads)
        self.path = Path(path)
        source = str(self.path)
        data, self._encoder, meta = open_onnx(self.path, "path", threads)
        if meta["role"] != ENCODER_ROLE:
            hint = (
                "load its <stem>.encoder.onnx" if meta["role"] == HEAD_ROLE
                else "classifiers load with medmeta.edge.EdgeModel"
            )  # fmt: skip
            raise EdgeModelError(f"{source}: not a segmentation encoder (role "
                                 f"{meta['role']!r}); {hint}")  # fmt: skip
        self._meta = meta
        _check_session(self._encoder, [meta["input_name"]], ["features"], source)
        check_weights(data, meta, source)
        try:
            self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
            self.rule = PoolingRule.from_dict(meta["segmentation"]["pooling"])
            state = _initial_enrolment(meta, self.rule)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, EdgeModelError):
                raise EdgeModelError(f"{source}: {err}") from err
            raise EdgeModelError(f"{source}: invalid segmentation metadata ({err})") from err
        if list(self.preprocessing.input_shape) != list(meta["input_shape"]):
            raise EdgeModelError(f"{source}: preprocessing input_shape differs from input_shape")
        self._head = self._load_head(threads)
        self._lock = threading.Lock()
        self._state = state

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> EdgeSegmenter:
        """Load an exported segmenter (same as the constructor)."""
        return cls(path, threads=threads)

    def _load_head(self, threads: int | None) -> ort.InferenceSession:
        name = self._meta.get("head_file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name:
            raise EdgeModelError(f"{self.path}: encoder metadata has no valid head_file ({name!r})")
        path = self.path.parent / name
        data = _read_bytes(path, "head_file")
        if hashlib.sha256(data).hexdigest() != self._meta.get("head_sha256"):
            raise EdgeModelError(f"{path}: SHA-256 differs from the one its encoder recorded")
        session = cpu_session(data, str(path), threads)
        meta = session_metadata(session, str(path))
        check_weights(data, meta, str(path))
        if meta["role"] != HEAD_ROLE or meta.get("encoder_weights_sha256") != self._meta.get(
            "weights_sha256"
        ):
            raise EdgeModelError(f"{path}: not the segmentation head of {self.path.name}")
        _check_session(session, HEAD_INPUTS, HEAD_OUTPUTS, str(path))
        return session

    # -- properties ----------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the encoder's metadata (see :mod:`medmeta.edge.schema`)."""
        return copy.deepcopy(self._meta)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model input; label maps are ``[n, H, W]``."""
        return tuple(self._meta["input_shape"])

    @property
    def class_names(self) -> list[str]:
        """The current classes, background first (label k is ``class_names[k]``)."""
        return list(self._state.class_names)

    @property
    def enrolment(self) -> SegmentationEnrolment:
        """The current (immutable) enrolment snapshot."""
        return self._state

    @property
    def prototypes(self) -> np.ndarray:
        """A copy of the current prototypes ``[P, D]``."""
        return self._state.prototypes.copy()

    @property
    def prototype_classes(self) -> np.ndarray:
        """A copy of the class of each prototype ``[P]``."""
        return self._state.prototype_classes.copy()

    # -- inference -----------------------------------------------------------------------
    def preprocess(self, raw: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Model inputs ``[n, C, H, W]`` float32 from raw images (the model's
        :class:`Preprocessing`), or, with ``preprocessed=True``, float32 model inputs
        checked as given."""
        if not preprocessed:
            return self.preprocessing(raw)
        return model_inputs(raw, self.input_shape, name="images")

    def features(self, images: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Encoder features ``[n, D, h, w]`` float32 of ``images``."""
        x = self.preprocess(images, preprocessed=preprocessed)
        return self._encoder.run(["features"], {self._meta["input_name"]: x})[0]

    def _head_outputs(self, images: Any, preprocessed: bool) -> tuple[np.ndarray, np.ndarray]:
        state = self._state  # one snapshot for the whole call
        feats = self.features(images, preprocessed=preprocessed)
        logits, labels = self._head.run(None, {
            "features": feats, "prototypes": state.prototypes, "prototype_onehot": state.onehot,
        })  # fmt: skip
        return logits, labels

    def logits(self, images: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Per-pixel class scores ``[n, N+1, H, W]`` float32 (the learner's logits)."""
        return self._head_outputs(images, preprocessed)[0]

    def predict_proba(self, images: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Per-pixel class probabilities ``[n, N+1, H, W]`` float32 (softmax of the logits
        over classes; uncalibrated)."""
        logits = self.logits(images, preprocessed=preprocessed)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, images: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Label maps ``[n, H, W]`` int64 (0 = background, k = ``class_names[k]``) at the
        model's input size ``H x W``."""
        return self._head_outputs(images, preprocessed)[1].astype(np.int64, copy=False)

    # -- enrolment -----------------------------------------------------------------------
    def _support(
        self, images: Any, masks: list[np.ndarray], preprocessed: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Model inputs ``[S, C, H, W]`` of the support images, each mask checked to have
        its image's spatial size (raw images: ``[H, W]``, ``[H, W, c]`` or ``[c, H, W]``)."""
        if isinstance(images, list | tuple):
            x = np.concatenate([
                self.preprocess(im, preprocessed=True) if preprocessed
                else self.preprocessing(im, batched=False)  # one image each, whatever its shape
                for im in images
            ])  # fmt: skip
            shapes = [np.shape(im) for im in images]
        else:
            x = self.preprocess(images, preprocessed=preprocessed)
            shape = np.shape(images)
            shapes = [shape[1:] if len(shape) == 4 else shape] * len(x)
        if len(x) != len(masks):
            raise ValueError(
                f"support_masks: {len(masks)} label maps for {len(x)} support images (one each)"
            )
        for i, (m, shape) in enumerate(zip(masks, shapes, strict=True)):
            if preprocessed:
                sizes = {tuple(self.input_shape[1:])}
            else:
                sizes = {tuple(shape)} if len(shape) == 2 else {tuple(shape[1:]), tuple(shape[:2])}
            if tuple(m.shape) not in sizes:
                raise ValueError(
                    f"support_masks[{i}]: shape {list(m.shape)} differs from the size of its "
                    f"image (support_images[{i}] has shape {list(shape)}); give each mask at its "
                    "image's resolution"
                )
        return x, masks

    def _label_names(self, masks: list[np.ndarray], class_names: Sequence[str] | None) -> list[str]:
        """The class name of each label value, after checking the labels against it."""
        state = self._state
        if class_names is not None:
            if isinstance(class_names, str):
                raise TypeError("class_names: expected a sequence of names, got one string")
            names = [str(n) for n in class_names]
            if len(names) < 2 or len(set(names)) != len(names):
                raise ValueError(
                    f"class_names: expected unique names, the background first, got {names}"
                )
            if names[0] != state.class_names[0]:
                raise ValueError(f"class_names[0] must be the background, "
                                 f"{state.class_names[0]!r}; got {names[0]!r}")  # fmt: skip
        else:
            names = list(state.class_names)
        used: set[int] = set()
        for i, m in enumerate(masks):
            lo, hi = int(m.min()), int(m.max())
            if lo < 0 or hi >= len(names):
                raise ValueError(
                    f"support_masks[{i}]: label {lo if lo < 0 else hi} is outside the class "
                    f"list 0..{len(names) - 1} ({', '.join(names)})"
                )
            if hi == 0:
                raise ValueError(
                    f"support_masks[{i}] is empty (background only); outline at least one "
                    "class in every support image"
                )
            used.update(np.unique(m).tolist())
        for k, name in enumerate(names[1:], 1):
            if k not in used and name not in state.class_names:
                raise ValueError(f"class {name!r} has no pixel in any support mask")
        return names

    def enrol(
        self,
        support_images: Any,
        support_masks: Any,
        class_names: Sequence[str] | None = None,
        *,
        replace: bool = False,
        preprocessed: bool = False,
    ) -> EdgeSegmenter:
        """Add or update classes from support images and their label maps.

        Args:
            support_images: ``S`` raw images (a batch array or a list; or float32 model
                inputs ``[S, C, H, W]`` with ``preprocessed=True``).
            support_masks: ``S`` integer (or bool) label maps, each ``[H, W]`` of its image's
                own size (``[S, H, W]`` or a list): 0 = background, k = ``class_names[k]``.
            class_names: the names of labels 0..K, the background first (default: the
                current classes). New names become new classes, appended in order.
            replace: the classes present in these masks (the background too, where a pixel
                is 0) drop their earlier support images; otherwise these images join them
                and the prototypes are pooled over all.

        The soft masks are pooled from each mask at its own resolution onto the feature
        grid; the prototypes of every class with support are recomputed and the new state
        is published atomically. Returns ``self``.

        Raises:
            TypeError: non-integer masks; ValueError: a mask whose shape differs from its
            image, a label outside the class list, an empty (background-only) mask, a named
            class without pixels, or new images for a class exported without its support
            set (re-enrol it with ``replace=True``).
        """
        masks = _mask_list(support_masks)
        x, masks = self._support(support_images, masks, preprocessed)
        names = self._label_names(masks, class_names)
        feats = self._encoder.run(["features"], {self._meta["input_name"]: x})[0]
        with self._lock:  # re-read the state: another enrolment may have landed meanwhile
            state = self._state
            all_names = list(state.class_names)
            all_names += [n for n in names if n not in all_names]
            index = np.array([all_names.index(n) for n in names], np.int64)
            grid = feats.shape[-2:]
            new = np.concatenate([soft_masks(index[m][None], len(all_names), grid) for m in masks])
            self._state = self._merged(state, all_names, feats, new, replace)
        logger.info("enrolled %d support images; classes %s", len(x), ", ".join(all_names))
        return self

    def _merged(
        self,
        state: SegmentationEnrolment,
        names: list[str],
        feats: np.ndarray,
        masks: np.ndarray,
        replace: bool,
    ) -> SegmentationEnrolment:
        """``state`` with the new support ``feats [S, D, h, w]``, ``masks [S, K, h, w]``."""
        K = len(names)
        present = [int(c) for c in np.flatnonzero(masks.sum((0, 2, 3)) > 0)]
        blocked = [
            names[c] for c in present
            if c in state.fixed_classes and (c > 0 or self.rule.background_prototypes)
        ]  # fmt: skip
        if blocked and not replace:
            raise ValueError(
                f"classes {blocked} were exported without their support images, so new images "
                "cannot join their prototypes; re-enrol them with replace=True"
            )
        old = np.zeros((len(state.masks), K, *state.masks.shape[2:]), np.float32)
        old[:, : state.masks.shape[1]] = state.masks
        if replace:
            old[:, present] = 0
        keep = old.sum((1, 2, 3)) > 0
        if keep.any():
            feats = np.concatenate([state.features[keep], feats])
            masks = np.concatenate([old[keep], masks])
        fixed_rows = np.isin(
            state.prototype_classes, sorted(set(state.fixed_classes) - set(present))
        )
        fixed = (state.prototypes[fixed_rows], state.prototype_classes[fixed_rows])
        return build_enrolment(names, feats, masks, self.rule, fixed)

    def __repr__(self) -> str:
        return (
            f"EdgeSegmenter({self.path.name!r}, algorithm={self._meta.get('algorithm')!r}, "
            f"classes={self.class_names}, input_shape={list(self.input_shape)})"
        )


def _mask_list(masks: Any) -> list[np.ndarray]:
    """``support_masks`` as a list of 2-D int64 label maps (bool masks are 0/1)."""
    if hasattr(masks, "detach") and hasattr(masks, "numpy"):  # a torch tensor, without torch
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, list | tuple):
        items = [np.asarray(m) for m in masks]
    else:
        a = np.asarray(masks)
        if a.ndim not in (2, 3):
            raise ValueError(
                f"support_masks: expected label maps [S, H, W] (or a list of [H, W]), got shape "
                f"{list(a.shape)}"
            )
        items = [a] if a.ndim == 2 else list(a)
    if not items:
        raise ValueError("support_masks: no label maps given")
    out = []
    for i, m in enumerate(items):
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"support_masks[{i}]: expected a label map [H, W], got shape "
                             f"{list(m.shape)}")  # fmt: skip
        if m.dtype != bool and m.dtype.kind not in "iu":
            raise TypeError(
                f"support_masks[{i}]: expected integer class labels (0 = background), got "
                f"dtype {m.dtype}"
            )
        out.append(m.astype(np.int64))
    return out
