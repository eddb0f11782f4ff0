"""Explanations of pretrained networks: excitation pullbacks and counterfactuals.

``ExcitationPullback(model).attribute(x, target=...)`` is the model's input gradient with every
ReLU gate ``1[z > 0]`` replaced by ``sigmoid(z / tau)`` (and max pools by a softmax pool) in the
backward pass only; :func:`counterfactual` ascends it in pixel space. Every call site is reached by
a ``torch.fx`` rewrite (see :class:`CoverageReport`); the user's model is never modified.
"""

from pellucid.explain.base import Explainer
from pellucid.explain.baselines import (DeepLift, GradCam, GradientShap, GuidedBackprop, GuidedGradCam,
                                        HookCoverageWarning, InputXGradient, IntegratedGradients,
                                        SmoothGrad)
from pellucid.explain.counterfactual import CounterfactualResult, counterfactual
from pellucid.explain.gates import (GATES, ExcitationMaxPool2d, ExcitationReLU, PoolGeometry,
                                    normal_cdf_gate, sigmoid_gate)
from pellucid.explain.methods import EXPLAINERS, ExcitationPullback, Gradient, create_explainer
from pellucid.explain.rewrite import (CoverageReport, PullbackCoverageWarning, Surrogate,
                                      UntraceableModelError, pullback_mode, rewrite_for_pullback,
                                      swap_modules)
from pellucid.explain.targets import (CosineTarget, DirectionTarget, LayerOutput, LayerTarget,
                                      UnitTarget, cosine_similarity_target, layer_features,
                                      scored_module)
from pellucid.explain.units import (LayerCheck, RepresentationCheck, UnitAddress, UnitGradients,
                                    gradient_alignment, gradient_representation_check,
                                    noise_gradient_alignment, unit_gradients_on_noise)

__all__ = ["EXPLAINERS", "GATES", "CounterfactualResult", "CoverageReport", "ExcitationMaxPool2d",
           "ExcitationPullback", "ExcitationReLU", "Explainer", "Gradient", "PoolGeometry",
           "PullbackCoverageWarning", "Surrogate", "UntraceableModelError", "cosine_similarity_target",
           "counterfactual", "create_explainer", "normal_cdf_gate", "pullback_mode",
           "rewrite_for_pullback", "sigmoid_gate", "swap_modules"]
__all__ += ["LayerCheck", "RepresentationCheck", "UnitAddress", "UnitGradients", "gradient_alignment",
            "gradient_representation_check", "noise_gradient_alignment", "unit_gradients_on_noise"]
__all__ += ["DeepLift", "GradCam", "GradientShap", "GuidedBackprop", "GuidedGradCam", "HookCoverageWarning",
            "InputXGradient", "IntegratedGradients", "SmoothGrad"]
__all__ += ["CosineTarget", "DirectionTarget", "LayerOutput", "LayerTarget", "UnitTarget", "layer_features",
            "scored_module"]
