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

# While sequence scoring is on (``loop_closure.sequence_length`` > 0) the fused model has a fifth
# and sixth input, the candidate's sequence similarity S and its gap, and a model of its own (the
# frame's evidence weighs differently beside its sequence's): optional keys of
# ``matching.fusion_model``, one group per kind of S (their scales differ), all of a group or none
# (none: S is not used, the single-frame model scores). A group's keys are ``<kind>_bias``,
# ``<kind>_<feature>`` for each of FUSED_FEATURES, ``<kind>_similarity`` and ``<kind>_gap``.
SEQUENCE_FEATURES = {
    "sequence_similarity": "sequence scoring's S of the candidate (vlad_localization.sequence)",
    "sequence_gap": "sequence_similarity minus the highest of the query's re-ranked candidates (<= 0)",
}
SEQUENCE_KINDS = {
    "sequence": "the mean similarity along the sequence (loop_closure.sequence_contrast_window 0)",
    "contrast": "the mean contrast-enhanced similarity (loop_closure.sequence_contrast_window > 0)",
}


def sequence_keys(kind: str) -> list[str]:
    """The ``matching.fusion_model`` keys of one :data:`SEQUENCE_KINDS` kind, in the order
    ``bias``, FUSED_FEATURES, SEQUENCE_FEATURES."""
    return [f"{kind}_{name}" for name in ("bias", *FUSED_FEATURES)] + \
        [kind + name[len("sequence"):] for name in SEQUENCE_FEATURES]


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

# The WPCA ``vlad-localization train`` writes (training/whitening.py)
WHITENING = {
    "learned": "learned from the pairs of one place: whitens what varies within a place (season, light), "
               "settings chosen on the validation places (Radenovic et al. 2018)",
    "pca": "init-model's PCA-whitening refitted on the training images (no pairs)",
}


def names(table: dict[str, str]) -> str:
    """``a | b | c``: the choices of one table, for help texts and error messages."""
    return " | ".join(table)
