"""Readers for medical data formats. Each module imports its optional library (pydicom,
nibabel, pandas, anndata, tifffile, Pillow) only when one of its functions is called."""
