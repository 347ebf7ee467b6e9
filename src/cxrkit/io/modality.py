"""The modality gate: which DICOM objects :func:`cxrkit.io.read_xray` reads as chest X-rays.

A DICOM file says what it is in its Modality (0008,0060): ``CR``, ``DX``, ``CT``, ``MR``...
A model trained on chest radiographs gives confident, meaningless scores on a CT slice or an
ultrasound frame, so the reader refuses every modality not in ``modalities`` (default
:data:`~cxrkit.io.xray.RADIOGRAPH_MODALITIES`), **before** the pixels are decoded, with a
message naming the modality and how to accept it (``--allow-modality``).

Without a Modality tag the data set is accepted unless its SOP Class implies another
modality (:data:`SOP_CLASS_MODALITY`: a CT Image Storage object is a CT, tag or not). A
Secondary Capture or an unknown SOP Class implies nothing, and is read.

No pydicom here: :mod:`cxrkit.io.dicom` passes the strings it read.
"""

from __future__ import annotations

from collections.abc import Collection

from cxrkit.io.xray import ImageReadError

_STORAGE = "1.2.840.10008.5.1.4.1.1."

SOP_CLASS_MODALITY: dict[str, str] = {
    _STORAGE + suffix: modality
    for modality, suffixes in {
        "CR": ("1",),  # Computed Radiography Image
        "DX": ("1.1", "1.1.1"),  # Digital X-Ray Image, for presentation / processing
        "MG": ("1.2", "1.2.1", "13.1.3"),  # Digital Mammography, Breast Tomosynthesis
        "IO": ("1.3", "1.3.1"),  # Digital Intra-Oral X-Ray
        "CT": ("2", "2.1", "2.2"),  # CT, Enhanced CT, Legacy Converted Enhanced CT
        "MR": ("4", "4.1", "4.4"),  # MR, Enhanced MR, Legacy Converted Enhanced MR
        "US": ("3.1", "6.1", "6.2"),  # Ultrasound (multi-frame), Enhanced US Volume
        "XA": ("12.1", "12.1.1", "13.1.1"),  # X-Ray Angiographic, Enhanced XA, 3D Angiographic
        "RF": ("12.2", "12.2.1"),  # X-Ray Radiofluoroscopic, Enhanced XRF
        "NM": ("20",),  # Nuclear Medicine
        "PT": ("128", "130"),  # PET, Enhanced PET
        "RTIMAGE": ("481.1",),
        "RTDOSE": ("481.2",),
        "SEG": ("66.4",),  # Segmentation
    }.items()
    for suffix in suffixes
}
"""Image storage SOP Class UID -> the one modality it implies (PS3.4 Annex B): the gate's
evidence for a data set without a Modality tag."""


def accepted_modalities(modalities: Collection[str]) -> tuple[str, ...]:
    """``modalities`` stripped, upper case, deduplicated, in order; a bare string is one."""
    if isinstance(modalities, str):  # "CT", not ("C", "T")
        modalities = (modalities,)
    return tuple(dict.fromkeys(str(m).strip().upper() for m in modalities))


def check_modality(
    name: str,
    modality: str | None,
    sop_class: str | None,
    modalities: Collection[str] | None,
    *,
    sop_class_name: str | None = None,
) -> None:
    """Raise :class:`ImageReadError` for a data set the gate refuses (see module doc).

    Args:
        name: the file, for the error.
        modality: its Modality tag, upper case; ``None`` when absent.
        sop_class: its SOP Class UID; ``None`` when absent.
        modalities: the accepted modalities (any case); ``None`` accepts every data set.
        sop_class_name: the SOP Class's name, for the error.
    """
    if modalities is None:
        return
    accepted = accepted_modalities(modalities)
    found = modality or SOP_CLASS_MODALITY.get(sop_class or "")
    if found is None or found in accepted:
        return
    what = f"DICOM Modality {found}"
    if modality is None:
        what = f"DICOM without a Modality tag, SOP Class {sop_class_name or sop_class} ({found}),"
    raise ImageReadError(
        name,
        f"{what} is not a radiograph (accepted: {', '.join(accepted) or 'none'}); "
        f"pass --allow-modality {found} to read it anyway",
    )
