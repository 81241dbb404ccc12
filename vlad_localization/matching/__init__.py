"""Patch matching and re-ranking (Hausler et al., CVPR 2021).

``PatchMatcher`` scores query/candidate patch descriptors (mutual nearest neighbours + RANSAC or
rapid spatial scoring + multi-scale fusion); ``patch_keypoints`` places patches in the image;
``draw_matches`` plots matched patches.
"""
from vlad_localization.matching.keypoints import patch_keypoints
from vlad_localization.matching.matcher import Correspondences, MatchResult, PatchMatcher
from vlad_localization.matching.plot import draw_matches

__all__ = ["Correspondences", "MatchResult", "PatchMatcher", "draw_matches", "patch_keypoints"]
