"""Every named choice of the package, declared once.

The configuration validates against these tables, the node's parameters take their allowed values
from them and the CLI's ``choices=`` and help texts are generated from them, so a new matcher,
backbone, fusion or mode is added here and where it is implemented, nowhere else.
"""
from __future__ import annotations

BACKBONES = {
    "vgg16": "VGG16 up to conv5_3 (the Patch-NetVLAD encoder)",
    "resnet18": "ResNet-18 truncated after layer3",
    "resnet50": "ResNet-50 truncated after layer3",
}

MATCHERS = {
    "ransac": "homography RANSAC on the mutual patch matches (official 'RANSAC')",
    "spatial": "rapid spatial scoring (official 'spatialApproximator')",
}

RANSAC_BACKENDS = {
    "auto": "batched on a GPU, OpenCV on the CPU (measured faster there: benchmarks/rerank.py); the "
            "reference fusion always uses OpenCV",
    "batched": "every candidate's and patch size's RANSAC in one torch computation on the descriptors' device",
    "opencv": "cv2.findHomography per candidate and patch size (the official re-ranking), on matching.workers threads",
}

FUSIONS = {
    "absolute": "weighted mean of the absolute per-size scores, in [0, 1]",
    "reference": "the official z-scores over the candidates (reproduces published results)",
    "fused": "logistic model of the global similarity, spatial and RANSAC scores (and their gaps to the "
             "query's best candidate): P(same place), in [0, 1]",
}

# Inputs of the ``fused`` model (``matching.fusion_model`` holds ``bias`` and one weight per name);
# the gaps compare a candidate with the best of the query's re-ranked candidates (0 for that one)
FUSED_FEATURES = {
    "global_similarity": "inner product of the NetVLAD global descriptors",
    "global_gap": "global_similarity minus the highest of the query's re-ranked candidates (<= 0)",
    "spatial": "absolute rapid spatial score in [0, 1] (size-weighted mean)",
    "spatial_gap": "spatial minus the highest of the query's re-ranked candidates (<= 0)",
    "ransac": "absolute RANSAC inlier fraction in [0, 1] (size-weighted mean)",
    "ransac_gap": "ransac minus the highest of the query's re-ranked candidates (<= 0)",
}

MODES = {
    "localize": "search the prebuilt map only (read-only)",
    "loop_closure": "search this run's own keyframes only (no map needed)",
    "both": "search the prebuilt map and this run's keyframes",
}

EVICTIONS = {
    "oldest": "drop the oldest keyframe of this run to make room",
    "refuse": "keep the first max_keyframes and insert no more",
}

REFINEMENTS = {
    "sift": "SIFT features matched inside the matched patch pairs (needs both images or their stored features)",
    "none": "the patch keypoints alone (coarse, one per conv cell: poses 10-22 deg off on EuRoC)",
}

# What ``vlad-localization train`` trains besides the NetVLAD layer: the backbone's last block or nothing
# (ResNets here end at layer3, so their last block is layer3)
TRAIN_LAYERS = {
    "none": "frozen backbone: conv features computed once and cached, epochs cost only the pooling (CPU)",
    "conv5": "VGG16 conv5_1..conv5_3 trained too (features cached at pool4; a GPU is advised)",
    "layer3": "ResNet layer3 (the last block kept here) trained too (features cached at layer2; GPU advised)",
}


def names(table: dict[str, str]) -> str:
    """``a | b | c``: the choices of one table, for help texts and error messages."""
    return " | ".join(table)
