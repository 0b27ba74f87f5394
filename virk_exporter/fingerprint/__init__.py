"""Root-cause fingerprinting: why did a source's frames drift from its reference?

``Fingerprinter(reference_frames).diagnose(frames)`` -> :class:`Diagnosis`.
"""

from virk_exporter.fingerprint.causes import CAUSES, VOCABULARY, Diagnosis, Evidence, Fingerprinter
from virk_exporter.fingerprint.detector import CaptureDetector, CaptureResult
from virk_exporter.fingerprint.geometry import GEOMETRY_NAMES, ReferenceView, compute_geometry
from virk_exporter.fingerprint.properties import PROPERTY_NAMES, compute_properties

__all__ = [
    "CaptureDetector",
    "CaptureResult",
    "CAUSES",
    "VOCABULARY",
    "Diagnosis",
    "Evidence",
    "Fingerprinter",
    "GEOMETRY_NAMES",
    "PROPERTY_NAMES",
    "ReferenceView",
    "compute_geometry",
    "compute_properties",
]
