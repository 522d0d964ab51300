"""Real biomedical datasets shipped with medmeta (data files only; see ``README.md`` and
``manifest.json`` here, and load them with :func:`medmeta.data.load`)."""
