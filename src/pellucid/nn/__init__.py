"""Layers. Semantic features (white-box paper): :class:`TwoStep`, :class:`RotationConvFeatures`,
:class:`AffineFeatures`, :class:`LogicalFeatures` on the shared :class:`SemanticFeatures` base."""

from pellucid.nn.affine_features import AffineFeatures
from pellucid.nn.logical import LogicalFeatures
from pellucid.nn.rotation_conv import RotationConvFeatures
from pellucid.nn.semantic import SemanticFeatures, normalize, project_constraints_
from pellucid.nn.twostep import TwoStep
from pellucid.nn.distance import ConvexDistance, CosineSimilarity, LpDistance, StereoAngle, lp_distance
from pellucid.nn.invex import InvexDistance
from pellucid.nn.metric_conv import L2DistanceConv2d, MetricConv2d, l2_distance_conv2d
from pellucid.nn.similarity import DistanceSoftmax, EpsilonSoftmax, min_exp_similarity, umap_similarity
from pellucid.nn.disjunction import (GumbelConv2d, L2Conv2d, MaxMatch, Mean, PositiveConv2d, Scale,
                                     SoftMaxPool, exponential_anneal)

__all__ = ["AffineFeatures", "LogicalFeatures", "RotationConvFeatures", "SemanticFeatures",
           "TwoStep", "normalize", "project_constraints_",
           # metric neurons (Metric as Transform)
           "ConvexDistance", "CosineSimilarity", "DistanceSoftmax", "EpsilonSoftmax", "InvexDistance",
           "L2DistanceConv2d", "LpDistance", "MetricConv2d", "StereoAngle", "l2_distance_conv2d",
           "lp_distance", "min_exp_similarity", "umap_similarity",
           # disjunctive building blocks (research log)
           "GumbelConv2d", "L2Conv2d", "MaxMatch", "Mean", "PositiveConv2d", "Scale", "SoftMaxPool",
           "exponential_anneal"]
