"""The Patch-NetVLAD model (Hausler et al., CVPR 2021): backbones, NetVLAD / Patch-NetVLAD pooling,
WPCA, checkpoints and the :class:`~vlad_localization.model.encoder.Encoder`.

Submodules are imported lazily by their users (``from vlad_localization.model.encoder import
Encoder``) so that importing the package stays cheap.
"""
