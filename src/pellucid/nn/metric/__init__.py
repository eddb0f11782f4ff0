"""Metric neurons ("Metric as Transform"): distances and similarities as neurons (``distance``,
``invex``), their convolutional form (``conv``), the softmax dictionaries with epsilon rejection
(``similarity``) and the inversion of distance outputs back to inputs (``inversion``)."""

from pellucid.nn.metric.conv import L2DistanceConv2d, MetricConv2d, l2_distance_conv2d
from pellucid.nn.metric.distance import (ConvexDistance, CosineSimilarity, InputConvexDistance, LpDistance, StereoAngle,
                                         lp_distance)
from pellucid.nn.metric.inversion import invert_angles, invert_euclidean, stereographic
from pellucid.nn.metric.invex import InvexDistance
from pellucid.nn.metric.similarity import DistanceSoftmax, EpsilonSoftmax, min_exp_similarity, umap_similarity

__all__ = ["ConvexDistance", "CosineSimilarity", "DistanceSoftmax", "EpsilonSoftmax", "InputConvexDistance",
           "InvexDistance",
           "L2DistanceConv2d", "LpDistance", "MetricConv2d", "StereoAngle", "invert_angles",
           "invert_euclidean", "l2_distance_conv2d", "lp_distance", "min_exp_similarity",
           "stereographic", "umap_similarity"]
