"""Coverage-guided fuzzing of medmeta's readers with atheris (libFuzzer for Python).

One harness per reader (``fuzz_<reader>.py``): it writes the fuzzed bytes to a scratch file
(several files for multi-file formats, see :data:`._harness.SPLIT`), calls the reader and
lets only the reader's documented errors through (:class:`~medmeta.data.DataError`,
:class:`~medmeta.edge.EdgeModelError` or the :class:`ValueError` an edge function documents,
each with a message). Any other exception, a crash, a hang (``-timeout``) or a huge
allocation (``-rss_limit_mb``) is a finding. Seeds are built at run time from the real
sample files (small slices of ``python/medmeta/datasets/*`` and ``tests/data/files/*``).

Run every harness for 10 minutes each (two at a time)::

    python -m tests.fuzz.run --seconds 600 --jobs 2

A finding leaves its input in ``--work``'s ``artifacts/<harness>/``; once the reader is
fixed, copy it to ``tests/fuzz/regressions/<harness>/`` where
``tests/fuzz/test_fuzz_regressions.py`` replays it on every test run.
"""
