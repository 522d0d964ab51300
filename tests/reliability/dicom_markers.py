"""DICOM files whose identifying attributes hold marker strings, and a scan for the markers
in text and files: the material of the privacy tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

FILES = Path(__file__).resolve().parents[1] / "data" / "files"

#: A UID root no real file uses; every UID of the marked files starts with it.
UID_ROOT = "1.2.826.0.1.3680043.10.99417"

#: Identifying attributes -> marker values (valid for their VR, so pydicom reads them
#: without complaint). Dates and times are unusual on purpose (no collision with numbers).
MARKERS: dict[str, str] = {
    "PatientName": "QXFAMILY7Q^QXGIVEN7Q",
    "PatientBirthDate": "18870417",
    "PatientBirthTime": "091827",
    "PatientAddress": "QXADDRESS7Q",
    "OtherPatientIDs": "QXOTHERID7Q",
    "PatientMotherBirthName": "QXMOTHER7Q",
    "PatientTelephoneNumbers": "QXPHONE7Q",
    "PatientComments": "QXPATCOMMENT7Q",
    "InstitutionName": "QXINSTITUTION7Q",
    "InstitutionAddress": "QXINSTADDR7Q",
    "InstitutionalDepartmentName": "QXDEPARTMENT7Q",
    "ReferringPhysicianName": "QXREFERRER7Q",
    "PerformingPhysicianName": "QXPERFORMER7Q",
    "OperatorsName": "QXOPERATOR7Q",
    "AccessionNumber": "QXACCESS7Q",
    "StudyID": "QXSTUDYID7Q",
    "StudyDate": "18890523",
    "SeriesDate": "18890524",
    "AcquisitionDate": "18890525",
    "ContentDate": "18890526",
    "InstanceCreationDate": "18890527",
    "StudyTime": "071829",
    "StudyDescription": "QXSTUDYDESC7Q",
    "SeriesDescription": "QXSERIESDESC7Q",
    "StationName": "QXSTATION7Q",
    "DeviceSerialNumber": "QXSERIAL7Q",
    "ImageComments": "QXIMAGECOMMENT7Q",
    "StudyInstanceUID": f"{UID_ROOT}.1",
    "FrameOfReferenceUID": f"{UID_ROOT}.2",
}


def patient_id(k: int) -> str:
    """The PatientID marker of the ``k``-th patient."""
    return f"QXPATIENTID{k}7Q"


def tokens() -> list[str]:
    """What must never appear: each marker (and each part of a person name), the patient
    ids, the UID root and the dates in ISO form too."""
    out = {UID_ROOT, "QXPATIENTID"}
    for value in MARKERS.values():
        out.update(v for v in value.split("^") if v)
        if value.isdigit() and len(value) == 8:  # a date: also as 1887-04-17
            out.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return sorted(out)


def write_marked(path: Path, *, patient: int, shift: int, index: int, seed: int = 0) -> Path:
    """The real ``CT_small.dcm`` (noise added, values shifted by ``shift``) with every
    attribute of :data:`MARKERS` set, PatientID ``patient_id(patient)`` and its own UIDs."""
    import pydicom

    ds = pydicom.dcmread(FILES / "CT_small.dcm")
    rng = np.random.default_rng(seed + 1000 * patient + index)
    base = ds.pixel_array.astype(np.int32)
    noisy = base + shift + rng.integers(-20, 20, base.shape)
    ds.PixelData = noisy.clip(0, 4000).astype(ds.pixel_array.dtype).tobytes()
    for keyword, value in MARKERS.items():
        setattr(ds, keyword, value)
    ds.PatientID = patient_id(patient)
    ds.SeriesInstanceUID = f"{UID_ROOT}.3.{patient}"
    ds.SOPInstanceUID = f"{UID_ROOT}.4.{patient}.{index}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 5.0 * index]
    ds.InstanceNumber = index + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def marked_classes(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    """``root/c<k>/s<i>.dcm``: one patient per class, classes apart in intensity."""
    for k in range(classes):
        for i in range(per_class):
            write_marked(root / f"c{k}" / f"s{i}.dcm", patient=k, shift=120 * k - 180, index=i)
    return root


def found_in_text(text: str) -> list[str]:
    """The markers in ``text`` (case-insensitive)."""
    upper = text.upper()
    return [t for t in tokens() if t.upper() in upper]


def found_in_bytes(blob: bytes) -> list[str]:
    """The markers in ``blob`` as UTF-8 or UTF-16 (case-insensitive)."""
    low = blob.lower()
    hits = []
    for t in tokens():
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            if t.lower().encode(encoding) in low:
                hits.append(t)
                break
    return hits


def found_in_files(folders: Iterable[Path]) -> dict[str, list[str]]:
    """``{file: markers}`` for every file under ``folders`` holding a marker."""
    out = {}
    for folder in folders:
        files = (
            [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        )
        for f in files:
            hits = found_in_bytes(f.read_bytes())
            if hits:
                out[str(f)] = hits
    return out
