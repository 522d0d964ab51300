"""EdgeModel: run a medmeta ONNX export with numpy and onnxruntime only.

Two kinds of file load (see :mod:`medmeta.export`):

* a **classifier** (``model.onnx``): input -> calibrated ``probabilities [n, N]``, and, for
  learners with an embedding space, ``distances [n, N]`` to the class prototypes and
  ``embeddings [n, D]`` (OOD flags and explanations). Its classes are fixed.
* an **embedder** (``model.embed.onnx``) with its sibling **head** (``model.head.onnx``):
  input -> ``embeddings``; the head maps ``(embeddings, prototypes)`` to probabilities and
  distances. The device enrols classes (:meth:`EdgeModel.enrol`) by computing prototypes
  of new support embeddings with medmeta's native kernels, and keeps the enrolment in an
  ``.npz`` (:meth:`EdgeModel.save`, ``EdgeModel(path, enrolment=...)``).

Inputs are raw arrays, preprocessed by the model's own :class:`Preprocessing` (uint8 /
uint16 / float images, vectors, series), or -- with ``preprocessed=True`` -- float32
arrays of exactly ``[n, *input_shape]``, which are checked and used as they are. The flag
is explicit; the runtime never guesses which kind it got.

Thread safety: one model may be shared by threads. Predictions, explanations and saves run
concurrently (``InferenceSession.run`` is thread-safe), each on the one immutable enrolment
snapshot it read first; enrolments and :meth:`EdgeModel.load_enrolment` publish a new
snapshot atomically under a lock, and an enrolment resolves its labels against the very
state it replaces (its embeddings are computed before, outside the lock), so concurrent
enrolments and loads apply one after another (tests/edge/test_thread_safety.py).
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from medmeta._files import atomic_write_bytes
from medmeta.edge.enrol import DEFAULT_OOD_QUANTILE, Enrolment, build_enrolment
from medmeta.edge.kernels import check_label_range, pairwise_distances
from medmeta.edge.preprocess import Preprocessing, model_inputs
from medmeta.edge.results import Explanation, Neighbour, Prediction
from medmeta.edge.schema import (
    REGRESSION_ROLES,
    SEGMENTATION_ROLES,
    EdgeModelError,
    decode_array,
    session_metadata,
)
from medmeta.edge.weights import check_weights

__all__ = ["EdgeModel"]

logger = logging.getLogger(__name__)

ENROLMENT_FORMAT = "medmeta-enrolment"


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    return path.read_bytes()


def check_threads(threads: int | None) -> None:
    """``threads`` (onnxruntime intra-op threads) is a positive int or None."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads: expected a positive int or None, got {threads!r}")


def cpu_session(
    model: bytes | str | os.PathLike[str], source: str, threads: int | None
) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model`` (serialized bytes or a file path) on
    ``threads`` intra-op threads (None: onnxruntime's default) and one inter-op thread,
    quiet below errors; a model that cannot load raises :class:`EdgeModelError` naming
    ``source``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; problems reach the caller as exceptions
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else os.fspath(model),
            options,
            providers=["CPUExecutionProvider"],
        )
    except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise EdgeModelError(
            f"{source}: cannot be loaded as an ONNX model (corrupt or truncated?): "
            f"{type(err).__name__}: {str(err).strip()[:300]}"
        ) from err


def open_onnx(
    path: Path, what: str, threads: int | None
) -> tuple[bytes, ort.InferenceSession, dict[str, Any]]:
    """``(file bytes, CPU session, validated medmeta metadata)`` of the exported file
    ``path`` (``what`` names the argument when the file is missing; errors name the file)."""
    data = _read_bytes(path, what)
    session = cpu_session(data, str(path), threads)
    return data, session, session_metadata(session, str(path))


def _check_io(session: ort.InferenceSession, meta: dict[str, Any], source: str) -> None:
    """The graph's inputs and outputs are what the metadata says, with a dynamic batch."""
    inputs = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    if names != list(meta["outputs"]):
        raise EdgeModelError(
            f"{source}: graph outputs {names} differ from metadata {meta['outputs']}"
        )
    first = inputs[0] if inputs else None
    if first is None or first.name != meta["input_name"] or first.type != "tensor(float)":
        got = None if first is None else (first.name, first.type)
        raise EdgeModelError(
            f"{source}: expected a float32 input {meta['input_name']!r}, the graph has {got}"
        )
    shape = list(first.shape)
    if shape[1:] != list(meta["input_shape"]) or isinstance(shape[0], int):
        raise EdgeModelError(
            f"{source}: graph input shape {shape} does not match [batch, *{meta['input_shape']}] "
            "with a dynamic batch axis"
        )


class EdgeModel:
    """A medmeta ONNX model on a device (numpy + onnxruntime; see the module docstring).

    Args:
        path: a classifier file or an embedder file (its head is found beside it).
        threads: intra-op threads of onnxruntime (``None``: its default).
        enrolment: an ``.npz`` written by :meth:`save` to restore a device's enrolment.
        ood_quantile: override the exported quantile of the OOD rule (embedders).

    Raises:
        FileNotFoundError: ``path`` (or the embedder's head) does not exist.
        EdgeModelError: the file is corrupt, truncated, not a medmeta export, or its graph
            does not match its metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        enrolment: str | os.PathLike[str] | None = None,
        ood_quantile: float | None = None,
    ) -> None:
        check_threads(threads)
        if ood_quantile is not None and not 0.0 < ood_quantile <= 1.0:
            raise ValueError(f"ood_quantile: expected a value in (0, 1], got {ood_quantile!r}")
        self.path = Path(path)
        source = str(self.path)
        data, self._session, self._meta = open_onnx(self.path, "path", threads)
        role = self._meta["role"]
        if role in SEGMENTATION_ROLES:
            raise EdgeModelError(
                f"{source} is a segmentation {role}; load the encoder with medmeta.edge.EdgeSegmenter"
            )
        if role == "head":
            raise EdgeModelError(
                f"{source} is an enrolment head; load the embedder file that names it instead"
            )
        if role in REGRESSION_ROLES:
            raise EdgeModelError(
                f"{source} is a regressor (it predicts a number with an interval, not "
                "classes); load it with medmeta.edge.EdgeRegressor"
            )
        _check_io(self._session, self._meta, source)
        check_weights(data, self._meta, source)
        try:
            self.preprocessing = Preprocessing.from_dict(self._meta["preprocessing"])
        except (TypeError, ValueError) as err:
            raise EdgeModelError(f"{source}: invalid preprocessing metadata ({err})") from err
        if tuple(self.preprocessing.input_shape) != tuple(self._meta["input_shape"]):
            raise EdgeModelError(f"{source}: preprocessing input_shape differs from input_shape")
        self._head = self._load_head(threads) if role == "embedder" else None
        self._lock = threading.Lock()
        self._state: Enrolment | None = self._initial_state(ood_quantile)
        if enrolment is not None:
            self.load_enrolment(enrolment)

    # -- loading -------------------------------------------------------------------------
    def _load_head(self, threads: int | None) -> ort.InferenceSession:
        name = self._meta.get("head_file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name:
            raise EdgeModelError(
                f"{self.path}: embedder metadata has no valid head_file ({name!r})"
            )
        path = self.path.parent / name
        data = _read_bytes(path, "head_file")
        if hashlib.sha256(data).hexdigest() != self._meta.get("head_sha256"):
            raise EdgeModelError(f"{path}: SHA-256 differs from the one its embedder recorded")
        session = cpu_session(data, str(path), threads)
        meta = session_metadata(session, str(path))
        check_weights(data, meta, str(path))
        owners = {self._meta["weights_sha256"], self._meta.get("float_weights_sha256")}
        if meta["role"] != "head" or meta.get("embedder_weights_sha256") not in owners:
            raise EdgeModelError(f"{path}: not the enrolment head of {self.path.name}")
        inputs = [i.name for i in session.get_inputs()]
        if inputs != ["embeddings", "prototypes"] or [o.name for o in session.get_outputs()] != [
            "probabilities",
            "distances",
        ]:
            raise EdgeModelError(f"{path}: unexpected head inputs/outputs {inputs}")
        return session

    def _initial_state(self, quantile: float | None) -> Enrolment | None:
        meta, source = self._meta, str(self.path)
        enrol = meta.get("enrolment")
        if not enrol:
            return None
        try:
            protos = decode_array(enrol["prototypes"], "enrolment.prototypes").astype(np.float32)
            emb_data, lab_data = enrol.get("support_embeddings"), enrol.get("support_labels")
            emb = (
                decode_array(emb_data, "enrolment.support_embeddings").astype(np.float32)
                if emb_data
                else np.zeros((0, protos.shape[1]), np.float32)
            )
            labels = np.asarray(lab_data if lab_data else [], dtype=np.int64)
            q = float(quantile if quantile is not None else enrol["ood"]["quantile"])
            return build_enrolment(
                meta["class_names"],
                emb,
                labels,
                meta["metric"],
                quantile=q,
                fixed_prototypes=protos,
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, EdgeModelError):
                raise
            raise EdgeModelError(f"{source}: invalid enrolment metadata ({err})") from err

    @staticmethod
    def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The validated medmeta metadata of an exported file (any role)."""
        return open_onnx(Path(path), "path", 1)[2]

    # -- properties ----------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the file's metadata (see :mod:`medmeta.edge.schema`)."""
        return copy.deepcopy(self._meta)

    @property
    def role(self) -> str:
        """``"classifier"`` or ``"embedder"``."""
        return self._meta["role"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._meta["input_shape"])

    @property
    def temperature(self) -> float:
        """The calibration temperature baked into the probabilities."""
        return float(self._meta["temperature"])

    @property
    def class_names(self) -> list[str]:
        """The current classes, in probability-column order."""
        state = self._state
        return list(state.class_names if state is not None else self._meta["class_names"])

    @property
    def enrolment(self) -> Enrolment | None:
        """The current (immutable) enrolment snapshot, or None for plain classifiers."""
        return self._state

    @property
    def prototypes(self) -> np.ndarray | None:
        """A copy of the current prototypes ``[N, D]`` (None without an embedding space)."""
        state = self._state
        return None if state is None else state.prototypes.copy()

    @property
    def ood_threshold(self) -> float | None:
        state = self._state
        return None if state is None else state.ood_threshold

    # -- inference -----------------------------------------------------------------------
    def preprocess(self, raw: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Model inputs ``[n, *input_shape]`` float32 from raw inputs, or checked as given.

        Raises:
            TypeError: wrong dtype (with ``preprocessed=True`` only float32 is accepted).
            ValueError: wrong shape, an empty batch, NaN or infinite values.
        """
        if not preprocessed:
            return self.preprocessing(raw)
        return model_inputs(raw, self.input_shape)

    def _run(self, x: np.ndarray, state: Enrolment | None) -> dict[str, np.ndarray]:
        """Graph outputs by name for model inputs ``x``."""
        feed = {self._meta["input_name"]: x}
        if self._head is None:
            values = self._session.run(None, feed)
            return dict(zip(self._meta["outputs"], values, strict=True))
        if state is None or len(state.class_names) == 0:
            raise ValueError("no classes are enrolled; call enrol() first")
        (emb,) = self._session.run(["embeddings"], feed)
        probs, dist = self._head.run(None, {"embeddings": emb, "prototypes": state.prototypes})
        return {"probabilities": probs, "distances": dist, "embeddings": emb}

    def embed(self, raw: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Embeddings ``[n, D]`` (embedders and classifiers with an embedding output)."""
        if "embeddings" not in self._meta["outputs"]:
            raise ValueError(
                f"{self.path.name}: this {self.role} has no embedding output (the learner "
                f"{self._meta.get('algorithm')!r} exports probabilities only)"
            )
        x = self.preprocess(raw, preprocessed=preprocessed)
        return self._session.run(["embeddings"], {self._meta["input_name"]: x})[0]

    def predict_proba(self, raw: Any, *, preprocessed: bool = False) -> np.ndarray:
        """Calibrated class probabilities ``[n, N]`` float32."""
        x = self.preprocess(raw, preprocessed=preprocessed)
        return self._run(x, self._state)["probabilities"]

    def predict(self, raw: Any, *, preprocessed: bool = False) -> Prediction:
        """Labels, names, probabilities and OOD flags of ``n`` inputs (see :class:`Prediction`).

        An input whose distance to the nearest prototype exceeds the enrolment's threshold
        (:mod:`medmeta.edge.enrol`) is flagged ``ood`` and gets no class name.
        """
        state = self._state
        out = self._run(self.preprocess(raw, preprocessed=preprocessed), state)
        return self._prediction(out, state)

    def _prediction(self, out: dict[str, np.ndarray], state: Enrolment | None) -> Prediction:
        probs = out["probabilities"]
        labels = probs.argmax(1).astype(np.int64)
        classes = tuple(state.class_names if state is not None else self._meta["class_names"])
        dist = out.get("distances")
        if dist is None or state is None:
            ood = distance = threshold = None
        else:
            distance = dist.min(1)
            threshold = state.ood_threshold
            ood = distance > threshold if threshold is not None else np.zeros(len(probs), bool)
        names = [
            None if ood is not None and ood[i] else classes[int(c)] for i, c in enumerate(labels)
        ]
        return Prediction(labels, names, probs, classes, ood, distance, threshold)

    def explain(self, raw: Any, k: int = 3, *, preprocessed: bool = False) -> list[Explanation]:
        """For each input, its ``k`` nearest enrolled support examples (model metric) and its
        distance to every prototype, next to the prediction."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        state = self._state
        if state is None or "embeddings" not in self._meta["outputs"]:
            raise ValueError(f"{self.path.name}: explanations need an embedding space; this "
                             f"model ({self._meta.get('algorithm')!r}) has none")  # fmt: skip
        if len(state.embeddings) == 0:
            raise ValueError("no support examples are stored to explain with; enrol some first")
        out = self._run(self.preprocess(raw, preprocessed=preprocessed), state)
        pred = self._prediction(out, state)
        d = pairwise_distances(out["embeddings"], state.embeddings, state.metric)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        result = []
        for i in range(len(d)):
            neighbours = [
                Neighbour(
                    int(j), int(state.labels[j]), state.class_names[state.labels[j]], float(d[i, j])
                )
                for j in order[i]
            ]
            result.append(
                Explanation(
                    label=int(pred.labels[i]),
                    class_name=pred.class_names[i],
                    probability=float(pred.probabilities[i, pred.labels[i]]),
                    neighbours=neighbours,
                    prototype_distances={
                        name: float(v)
                        for name, v in zip(state.class_names, out["distances"][i], strict=True)
                    },
                    ood=None if pred.ood is None else bool(pred.ood[i]),
                )
            )
        return result

    # -- enrolment -----------------------------------------------------------------------
    def _require_embedder(self, action: str) -> Enrolment | None:
        if self.role != "embedder":
            raise EdgeModelError(
                f"{self.path.name} is a classifier with fixed classes; {action} needs the "
                "enrolment form (export with form='enrolment' or 'both' and load *.embed.onnx)"
            )
        return self._state

    def _label_names(
        self, labels: Any, class_names: Sequence[str] | None, n: int, state: Enrolment | None
    ) -> list[str]:
        y = np.asarray(labels)
        if y.shape != (n,):
            raise ValueError(
                f"labels: expected shape [{n}] (one per support input), got {list(y.shape)}"
            )
        if y.dtype.kind in "US" or (y.dtype == object and all(isinstance(v, str) for v in y)):
            if class_names is not None:
                raise TypeError("class_names: give it only with integer labels (they index it)")
            return [str(v) for v in y]
        if y.dtype == bool or y.dtype.kind not in "iu":
            raise TypeError(
                f"labels: expected integer class indices or class-name strings, got dtype {y.dtype}"
            )
        if class_names is not None:
            names = [str(c) for c in class_names]
            if len(set(names)) != len(names) or not names:
                raise ValueError(f"class_names: expected unique names, got {names}")
        else:
            names = list(state.class_names) if state is not None else []
            if not names:
                raise ValueError(
                    "labels: integer labels need class_names (no classes enrolled yet)"
                )
        check_label_range(y, len(names))
        if class_names is not None:
            known = set(state.class_names) if state is not None else set()
            used = set(y.tolist())
            for i, name in enumerate(names):
                if i not in used and name not in known:
                    raise ValueError(f"class {name!r} has no enrolment example")
        return [names[int(v)] for v in y]

    def enrol(
        self,
        raw_support: Any,
        labels: Any,
        class_names: Sequence[str] | None = None,
        *,
        replace: bool = False,
        preprocessed: bool = False,
    ) -> EdgeModel:
        """Add or update classes from labelled support inputs (embedders only).

        Args:
            raw_support: ``S`` inputs (raw, or model inputs with ``preprocessed=True``).
            labels: ``[S]`` class-name strings, or integer indices into ``class_names``
                (or, without ``class_names``, into the current classes).
            class_names: names for integer labels; each must get an example unless it is
                already enrolled.
            replace: the classes named here drop their earlier examples (otherwise the new
                examples join them and the prototype is the mean over all). New names
                always become new classes, appended in order of first appearance.

        The prototypes of all classes with stored examples are recomputed with the native
        kernel and the OOD threshold with them; the new state is published atomically.
        Returns ``self``.
        """
        self._require_embedder("enrol")
        x = self.preprocess(raw_support, preprocessed=preprocessed)
        self._label_names(labels, class_names, len(x), self._state)  # bad labels: before the model
        (emb,) = self._session.run(["embeddings"], {self._meta["input_name"]: x})
        with self._lock:  # one state in, one out: labels resolve against the state they change
            state = self._state
            names = self._label_names(labels, class_names, len(x), state)
            new = self._enrolled(state, names, emb, replace)
            self._state = new
        logger.info(
            "enrolled %d examples (%s); %d classes, OOD threshold %s",
            len(x), ", ".join(sorted(set(names))), len(new.class_names), new.ood_threshold,
        )  # fmt: skip
        return self

    def _enrolled(
        self, state: Enrolment | None, names: list[str], emb: np.ndarray, replace: bool
    ) -> Enrolment:
        """The enrolment after adding support embeddings ``emb [S, D]`` named ``names`` to
        ``state`` (see :meth:`enrol`); ``state`` itself is not changed."""
        all_names = list(state.class_names) if state is not None else []
        for name in names:
            if name not in all_names:
                all_names.append(name)
        index = {name: i for i, name in enumerate(all_names)}
        new_labels = np.array([index[n] for n in names], np.int64)
        dim = emb.shape[1]
        fixed = np.zeros((len(all_names), dim), np.float32)
        if state is None:
            old_emb, old_lab = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        else:
            touched = np.isin(state.labels, np.unique(new_labels))
            keep = ~touched if replace else np.ones(len(state.labels), bool)
            old_emb, old_lab = state.embeddings[keep], state.labels[keep]
            if not replace:
                counts = state.counts
                for c in np.unique(new_labels):
                    if c < len(counts) and counts[c] == 0:
                        raise ValueError(
                            f"class {all_names[c]!r} was exported without its support "
                            "examples, so new examples cannot update its mean; re-enrol it "
                            "with replace=True"
                        )
            fixed[: len(state.prototypes)] = state.prototypes
        return build_enrolment(
            all_names,
            np.concatenate([old_emb, emb]),
            np.concatenate([old_lab, new_labels]),
            self._meta["metric"],
            quantile=state.ood_quantile if state is not None else DEFAULT_OOD_QUANTILE,
            fixed_prototypes=fixed,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the current enrolment to an ``.npz`` (atomically) and return its path."""
        state = self._require_embedder("save")
        if state is None:
            raise ValueError("nothing to save: no classes are enrolled")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(ENROLMENT_FORMAT),
            weights_sha256=np.array(self._meta["weights_sha256"]),
            class_names=np.array(state.class_names, dtype=str),
            prototypes=state.prototypes,
            embeddings=state.embeddings,
            labels=state.labels,
            ood_quantile=np.array(state.ood_quantile),
        )
        return atomic_write_bytes(path, buffer.getvalue())

    def load_enrolment(self, path: str | os.PathLike[str]) -> EdgeModel:
        """Restore an enrolment written by :meth:`save` for this same embedder.

        Prototypes of classes with stored examples and the OOD threshold are recomputed
        from the stored embeddings, so a tampered prototype cannot slip in unnoticed.
        """
        self._require_embedder("load_enrolment")
        p = Path(path)
        data = _read_bytes(p, "enrolment")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                fields = {k: z[k] for k in z.files}
        except Exception as err:  # zipfile/npy format errors
            raise EdgeModelError(
                f"{p}: not a readable enrolment .npz ({type(err).__name__}: {err})"
            ) from err
        needed = {
            "format",
            "weights_sha256",
            "class_names",
            "prototypes",
            "embeddings",
            "labels",
            "ood_quantile",
        }
        if set(fields) != needed or str(fields["format"]) != ENROLMENT_FORMAT:
            raise EdgeModelError(f"{p}: not a medmeta enrolment file (fields {sorted(fields)})")
        if str(fields["weights_sha256"]) != self._meta["weights_sha256"]:
            raise EdgeModelError(f"{p}: was made with another embedder (weights SHA-256 differs)")
        dim = int(self._meta["embedding_dim"])
        protos, emb = fields["prototypes"], fields["embeddings"]
        if protos.ndim != 2 or protos.shape[1] != dim or emb.ndim != 2 or emb.shape[1] != dim:
            raise EdgeModelError(f"{p}: arrays do not have embedding size {dim}")
        try:
            state = build_enrolment(
                [str(n) for n in fields["class_names"]],
                emb.astype(np.float32),
                fields["labels"].astype(np.int64),
                self._meta["metric"],
                quantile=float(fields["ood_quantile"]),
                fixed_prototypes=protos.astype(np.float32),
            )
        except ValueError as err:
            raise EdgeModelError(f"{p}: inconsistent enrolment ({err})") from err
        with self._lock:
            self._state = state
        return self

    def __repr__(self) -> str:
        return (
            f"EdgeModel({self.path.name!r}, role={self.role!r}, classes={len(self.class_names)}, "
            f"input_shape={list(self.input_shape)})"
        )
