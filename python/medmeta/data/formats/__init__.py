"""Readers for medical data formats. Each module imports its optional library (pydicom,
nibabel, pandas, anndata, tifffile, Pillow, wfdb) only when one of its functions is called.

ECG beats: :func:`.wfdb_records.load_wfdb_beats` (WFDB records, ``pip install
medmeta[signals]``) and :func:`.beat_csv.load_beat_csv` (the same from CSV files, no extra),
both built on :mod:`.beats` (windows around beat annotations, AAMI classes)."""
