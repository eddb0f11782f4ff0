"""Layers. Semantic features (white-box paper): :class:`TwoStep`, :class:`RotationConvFeatures`,
:class:`AffineFeatures`, :class:`LogicalFeatures` on the shared :class:`SemanticFeatures` base."""

from pellucid.nn.affine_features import AffineFeatures
from pellucid.nn.logical import LogicalFeatures
from pellucid.nn.rotation_conv import RotationConvFeatures
from pellucid.nn.semantic import SemanticFeatures, normalize, project_constraints_
from pellucid.nn.twostep import TwoStep

__all__ = ["AffineFeatures", "LogicalFeatures", "RotationConvFeatures", "SemanticFeatures",
           "TwoStep", "normalize", "project_constraints_"]
