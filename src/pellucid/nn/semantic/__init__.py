"""Semantic features ("Towards White Box Deep Learning"): :class:`TwoStep` pixel levels, posed
convolutional features (:class:`RotationConvFeatures`), posed affine features
(:class:`AffineFeatures`) and the logical layer (:class:`LogicalFeatures`), on the shared
:class:`SemanticFeatures` base (``base``); ``kernels`` holds their fused max-correlation kernel."""

from pellucid.nn.semantic.affine_features import AffineFeatures
from pellucid.nn.semantic.base import SemanticFeatures, normalize, project_constraints_
from pellucid.nn.semantic.logical import LogicalFeatures
from pellucid.nn.semantic.rotation_conv import RotationConvFeatures
from pellucid.nn.semantic.twostep import TwoStep

__all__ = ["AffineFeatures", "LogicalFeatures", "RotationConvFeatures", "SemanticFeatures", "TwoStep",
           "normalize", "project_constraints_"]
