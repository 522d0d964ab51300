"""One EdgeModel shared by threads while one thread enrols (issue 16).

A stress test: reader threads predict, explain and save while a writer adds classes, replaces
them, adds examples by integer label and loads saved enrolments. Every state the writer
published is recorded (it is the only writer) and its single-threaded results are computed
afterwards: each prediction and explanation must equal, bitwise, those of one of those states
(no result mixes two), and each file a reader saved must load and predict as one of them.
A second test fixes one interleaving: an enrolment by integer labels whose embeddings are
being computed while another thread loads an enrolment with other classes applies its labels
to the classes it finally changes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from medmeta.edge import EdgeModel

READERS = 4


def _outcome(model: EdgeModel, queries: np.ndarray) -> tuple:
    """What a state shows: classes, probabilities (bytes: bitwise), OOD threshold and flags."""
    p = model.predict(queries)
    return p.classes, p.probabilities.tobytes(), p.ood_threshold, p.ood.tobytes()


def _writer_steps(device: EdgeModel, task, initial: Path) -> list:
    names, new = task.class_names, task.new_class_name
    sx, sy = task.support_raw, task.support_y
    return [
        lambda: device.enrol(task.new_support_raw, [new] * 5),  # a new class
        lambda: device.enrol(sx[sy == 0][:3], [names[0]] * 3, replace=True),  # fewer examples
        lambda: device.enrol(sx[sy == 1][:2], [1, 1]),  # integer labels: more examples
        lambda: device.load_enrolment(initial),  # back to the exported state
        lambda: device.enrol(task.new_support_raw[:2], ["other"] * 2),
        lambda: device.enrol(sx[sy == 2], np.zeros(5, int), class_names=[names[2]], replace=True),
        lambda: device.enrol(task.new_support_raw[2:], [new] * 3, replace=True),
    ]


def test_readers_see_one_enrolment_state_while_classes_change(exported, task, tmp_path):
    device = EdgeModel(exported.embedder, threads=1)
    queries = task.query_raw[::3]
    initial = device.save(tmp_path / "initial.npz")
    states = [device.save(tmp_path / "state_0.npz")]  # every published state, in order
    steps = _writer_steps(device, task, initial) * 2
    done, start = threading.Event(), threading.Barrier(READERS + 1)
    errors: list[BaseException] = []
    seen: list[tuple] = []
    explained: list[list] = []
    saved: list[Path] = []

    def writer() -> None:
        try:
            start.wait()
            for i, step in enumerate(steps, 1):
                step()
                states.append(device.save(tmp_path / f"state_{i}.npz"))  # the only writer
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    def reader(r: int) -> None:
        try:
            start.wait()
            i = 0
            while not done.is_set() or i < 3:
                seen.append(_outcome(device, queries))
                if i % 3 == r % 3:
                    explained.append(device.explain(queries[:2], k=3))
                if r == 0 and i % 4 == 0:
                    saved.append(device.save(tmp_path / f"reader_{i}.npz"))
                i += 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, repr(errors[0])

    reference = EdgeModel(exported.embedder, threads=1)
    want, want_explained = [], []
    for path in states:
        reference.load_enrolment(path)
        want.append(_outcome(reference, queries))
        want_explained.append(reference.explain(queries[:2], k=3))
    assert len({w[:2] for w in want}) >= 5, "the writer's steps must change what readers see"
    matched = [want.index(s) for s in seen if s in want]
    assert len(matched) == len(seen), f"{len(seen) - len(matched)} predictions mixed states"
    assert len(set(matched)) >= 2, "the readers never saw the enrolment change"
    assert all(e in want_explained for e in explained), "an explanation mixed states"
    for path in saved:
        assert _outcome(EdgeModel(exported.embedder, enrolment=path), queries) in want
    assert _outcome(device, queries) == want[-1]


class _GatedSession:
    """An onnxruntime session whose run() returns only when the test says so."""

    def __init__(self, session) -> None:
        self.session, self.running, self.release = session, threading.Event(), threading.Event()

    def run(self, *args, **kwargs):
        out = self.session.run(*args, **kwargs)
        self.running.set()
        assert self.release.wait(60)
        return out


def test_integer_labels_apply_to_the_state_the_enrolment_changes(exported, task, tmp_path):
    """Thread A enrols by integer label (index 0) while its embeddings are computed, thread B
    loads an enrolment whose classes are named differently: A's examples join class 0 of the
    loaded state (A ran after B), never a class of the state A started from."""
    source = EdgeModel(exported.embedder)
    with np.load(source.save(tmp_path / "a.npz")) as z:
        fields = dict(z)
    renamed = ["alpha", "beta", "gamma"]
    fields["class_names"] = np.array(renamed)
    np.savez(tmp_path / "renamed.npz", **fields)

    device = EdgeModel(exported.embedder)
    gate = device._session = _GatedSession(device._session)  # the embedding step of enrol()
    errors: list[BaseException] = []

    def enrol() -> None:
        try:
            device.enrol(task.new_support_raw[:2], [0, 0])
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=enrol)
    thread.start()
    assert gate.running.wait(60)
    device.load_enrolment(tmp_path / "renamed.npz")  # not blocked: A holds no lock yet
    gate.release.set()
    thread.join(60)
    assert not errors, repr(errors[0])
    assert device.class_names == renamed
    assert list(device.enrolment.counts) == [7, 5, 5]


def test_enrolment_errors_leave_the_state_unchanged(exported, task):
    device = EdgeModel(exported.embedder)
    before = device.enrolment
    with pytest.raises(ValueError, match=r"labels: must be in \[0, 3\), found 7"):
        device.enrol(task.new_support_raw[:2], [0, 7])
    assert device.enrolment is before
