"""Quality metrics of synthetic volumes: feature extractors, FID/KID/precision-recall, MS-SSIM diversity,
memorisation and conditioning fidelity, montages, and ``evaluate_quality`` that writes them all to a folder.
"""

from synthaug.metrics.features import (
    PLANES,
    FeatureExtractor,
    KerasResNet50,
    MedicalNet3D,
    RadImageNet2D,
    SeededResNet2D,
    SeededResNet3D,
    SliceExtractor,
    read_state_dict,
)
from synthaug.metrics.montage import save_montage, save_pairs
from synthaug.metrics.quality import (
    conditioning_fidelity,
    fid,
    fid_planes,
    kid,
    memorisation,
    ms_ssim_diversity,
    ms_ssim_settings,
    nearest_train_cases,
    nearest_train_label_agreement,
    precision_recall,
    voxel_distance,
    voxel_signature,
)
from synthaug.metrics.quality_report import evaluate_quality, headline, load_volumes, normalise_volume, render_report

__all__ = [
    "PLANES",
    "FeatureExtractor",
    "KerasResNet50",
    "MedicalNet3D",
    "RadImageNet2D",
    "SeededResNet2D",
    "SeededResNet3D",
    "SliceExtractor",
    "conditioning_fidelity",
    "evaluate_quality",
    "fid",
    "fid_planes",
    "headline",
    "kid",
    "load_volumes",
    "memorisation",
    "ms_ssim_diversity",
    "ms_ssim_settings",
    "nearest_train_cases",
    "nearest_train_label_agreement",
    "normalise_volume",
    "precision_recall",
    "read_state_dict",
    "render_report",
    "save_montage",
    "save_pairs",
    "voxel_distance",
    "voxel_signature",
]
