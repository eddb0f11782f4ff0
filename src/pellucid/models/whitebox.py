"""The white-box network of "Towards White Box Deep Learning": 4 layers of semantic features."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from pellucid.data.validation import check_images
from pellucid.errors import CheckpointError
from pellucid.models.inference import WindowQueries, window_index
from pellucid.models.registry import register_model
from pellucid.nn import AffineFeatures, LogicalFeatures, RotationConvFeatures, TwoStep

# torch.fx records the input check as one call (it reads tensor values, which a trace cannot), so
# a traced copy of the model (e.g. for excitation pullbacks) still checks every input.
torch.fx.wrap("check_images")


class WhiteBoxNet(nn.Module):
    """``x -> TwoStep -> rotation-posed conv features -> affine features -> logical features``.

    Input: images in [0, 1], ``(B, 1, H, W)``; output: one logit per class. Every intermediate
    value is a match score of a human-readable feature in its best pose (see :meth:`trace`).

    Excitation pullbacks (``ExcitationPullback(model)``) trace it with ``torch.fx``: each layer
    declares its sites (``excitation_sites``). Rewritten in the backward pass only: the conv
    layer's max over its ``K * P`` rotated kernels and its ReLU, the affine layer's max over poses
    and its ReLU, and the logical layer's max over roll poses (max -> ``softmax(s / tau)``-weighted
    pool, ReLU -> ``gate(z / tau)``). Left as it is: the TwoStep squashing (continuous and
    monotone, no gate). The forward is unchanged.
    """

    def __init__(self, n_classes: int = 2, image_size: int = 28, n_kernels: int = 2,
                 kernel_size: int = 5, n_rotations: int = 32, n_affine: int = 8,
                 n_affine_poses: int = 32, patch_size: int = 20) -> None:
        super().__init__()
        if n_affine % n_classes:
            raise ValueError("n_affine must be a multiple of n_classes (one block per class)")
        self.image_size = image_size
        self.twostep = TwoStep()
        self.conv = RotationConvFeatures(n_kernels, kernel_size, n_rotations)
        self.affine = AffineFeatures(n_affine, n_affine_poses, patch_size, image_size)
        self.logical = LogicalFeatures(n_classes, block=n_affine // n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, (1, self.image_size, self.image_size))
        return self.logical(self.affine(self.conv(self.twostep(x))))

    def window_queries(self, images: torch.Tensor, batch_size: int) -> "WhiteBoxWindowQueries":
        """Square-attack queries that recompute only what a window changes (see
        :class:`WhiteBoxWindowQueries`)."""
        return WhiteBoxWindowQueries(self, images, batch_size)

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate output and argmax pose, for figures ("how the model sees")."""
        check_images(x, (1, self.image_size, self.image_size))
        pixels = self.twostep(x)
        conv, conv_pose = self.conv(pixels, return_poses=True)
        affine, affine_pose = self.affine(conv, return_poses=True)
        logits, logical_pose = self.logical(affine, return_poses=True)
        return {"twostep": pixels, "conv": conv, "conv_pose": conv_pose.squeeze(1),
                "affine": affine, "affine_pose": affine_pose, "logits": logits,
                "logical_pose": logical_pose, "probs": logits.softmax(-1)}


class WhiteBoxWindowQueries(WindowQueries):
    r""":class:`~pellucid.models.inference.WindowQueries` for :class:`WhiteBoxNet`, recomputing only
    what a window changes.

    TwoStep acts per pixel and the conv layer sees a ``k x k`` neighbourhood (radius
    :math:`r = k // 2`), so a window of side :math:`s` changes TwoStep's output only inside the
    window and the conv map only inside the window widened by :math:`r`. Both maps of the current
    images are kept (zero-padded by :math:`2r` and :math:`r`); a query runs TwoStep on the window's
    :math:`s^2` pixels and the conv on an :math:`(s + 4r)^2` patch instead of the whole image, then
    pastes the :math:`(s + 2r)^2` block into the kept conv map and runs the affine and logical layers
    (one matrix product each) as usual. Late in a Square run :math:`s` is 1 to 4 pixels, so a query
    costs a fraction of a forward pass (``benchmarks/attack_speed.py`` measures the ratio). The
    scores agree with a full forward pass to float rounding (the conv on a patch may sum in
    another order); every image an attack reports broken is re-checked with a full forward pass
    by the evaluators.
    """

    # conv scores per block of patches kept at about 1.6 MB, like the full layer's image blocks
    _SCORES_PER_BLOCK = 400_000

    def __init__(self, model: WhiteBoxNet, images: torch.Tensor, batch_size: int) -> None:
        super().__init__(model, images, batch_size)
        k = model.conv.kernels.shape[-1]
        self.radius = k // 2
        self.kernels = model.conv._posed().reshape(-1, 1, k, k)
        self.pixels = images.new_zeros(images.shape[0], 1, *(d + 4 * self.radius for d in images.shape[2:]))
        self.maps = images.new_zeros(images.shape[0], 1, *(d + 2 * self.radius for d in images.shape[2:]))
        self._prepare(torch.arange(images.shape[0], device=images.device))

    def _prepare(self, rows: torch.Tensor) -> None:
        """Recompute the kept maps of ``images[rows]``."""
        r = self.radius
        for part in rows.split(self.batch_size):  # memory bound, not a per-sample loop
            pixels = self.model.twostep(self.images[part])
            self.pixels[part, :, 2 * r:-2 * r, 2 * r:-2 * r] = pixels
            self.maps[part, :, r:-r, r:-r] = self.model.conv(pixels)

    def set(self, rows: torch.Tensor, images: torch.Tensor) -> None:
        super().set(rows, images)
        self._prepare(rows)

    def query(self, rows: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              window: torch.Tensor) -> torch.Tensor:
        k, _, s = window.shape[:3]
        r, side = self.radius, s + 2 * self.radius
        h, w = self.images.shape[2:]
        if (s + 4 * r) ** 2 >= h * w:  # the patch would cover the image: a plain forward is cheaper
            return super().query(rows, top, left, window)
        every = torch.arange(k, device=rows.device)[:, None, None]
        new_pixels = self.model.twostep(window)  # (k, 1, s, s)
        # padded coordinates: image row i is row i + 2r of ``pixels`` and row i + r of ``maps``
        pi, pj = window_index(top, left, s, n=s + 4 * r)
        patch = self.pixels[rows[:, None, None], 0, pi, pj]  # (k, s + 4r, s + 4r)
        patch[:, 2 * r:2 * r + s, 2 * r:2 * r + s] = new_pixels[:, 0]
        block = max(1, self._SCORES_PER_BLOCK // (self.kernels.shape[0] * side * side))
        new_maps = torch.cat([self.model.conv.activation(F.conv2d(p, self.kernels).amax(dim=1, keepdim=True))
                              for p in patch[:, None].split(block)])  # (k, 1, s + 2r, s + 2r)
        maps = self.maps[rows]
        mi, mj = window_index(top, left, s, n=side)
        maps[every, 0, mi, mj] = new_maps[:, 0]
        self._last = (rows, top, left, window, new_pixels, new_maps)
        return self.model.logical(self.model.affine(maps[:, :, r:r + h, r:r + w]))

    def accept(self, keep: torch.Tensor) -> None:
        if len(self._last) == 4:  # the last query ran a plain forward
            super().accept(keep)
            self._prepare(self._last[0][keep])
            return
        rows, top, left, window, new_pixels, new_maps = (t[keep] for t in self._last)
        self._last = (rows, top, left, window)
        super().accept(torch.ones(len(rows), dtype=torch.bool, device=rows.device))
        r, s = self.radius, window.shape[2]
        pi, pj = window_index(top + 2 * r, left + 2 * r, s)
        self.pixels[rows[:, None, None], 0, pi, pj] = new_pixels[:, 0]
        mi, mj = window_index(top, left, s, n=s + 2 * r)
        self.maps[rows[:, None, None], 0, mi, mj] = new_maps[:, 0]


@register_model("whitebox-mnist35", input_shape=(1, 28, 28), dataset="mnist", classes=(3, 5))
def whitebox_mnist35(**kwargs) -> WhiteBoxNet:
    """White-box semantic-feature network for MNIST 3 vs 5 (4,810 parameters)."""
    return WhiteBoxNet(**kwargs)


# Ten classes. The layers are the 3-vs-5 network's; only the widths grow. The logical layer keeps
# its meaning with K = 10: class c's block of k affine features are k prototypes of that class
# (each in its own 16 learned affine poses), its logit is an OR (max) over them, and every other
# class's features enter with their own learned weights (initially -0.1: AND-NOT).
_TEN_CLASS = dict(n_classes=10, n_affine=80, n_affine_poses=16)


@register_model("whitebox-mnist10", input_shape=(1, 28, 28), dataset="mnist")
def whitebox_mnist10(**kwargs) -> WhiteBoxNet:
    """White-box semantic-feature network for the 10 MNIST digits (8 prototypes per class, 40,538 parameters)."""
    return WhiteBoxNet(**{**_TEN_CLASS, **kwargs})


@register_model("whitebox-fashion10", input_shape=(1, 28, 28), dataset="fashion-mnist")
def whitebox_fashion10(**kwargs) -> WhiteBoxNet:
    """White-box semantic-feature network for the 10 Fashion-MNIST classes (8 prototypes per class, 40,538 parameters)."""
    return WhiteBoxNet(**{**_TEN_CLASS, **kwargs})


def convert_authors_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the published checkpoint's keys (github.com/314-Foundation/white-box-nn) to ours.

    Drops the 18 bias/scale entries that the reference registers but never uses.
    """
    try:
        n_poses = len([k for k in state if k.startswith("affine.sampler.poses.")])
        out = {
            "twostep.a0": state["pixel.a0"], "twostep.a1": state["pixel.a1"],
            "twostep.t0": state["pixel.t0"], "twostep.t1": state["pixel.t1"],
            "twostep.scales": state["pixel.scales"],
            "conv.kernels": state["conv.conv.weight"][:, 0],  # (K, 1, k, k) -> (K, k, k)
            "affine.features": state["affine.features"],
            # ParameterList of P tensors (F, 2, 3) -> one (F, P, 2, 3) tensor
            "affine.poses": torch.stack([state[f"affine.sampler.poses.{p}"] for p in range(n_poses)], 1),
            "logical.features": state["sparse.features"],
        }
    except KeyError as e:
        raise CheckpointError(f"not a white-box-nn state dict: missing {e}") from None
    angles = state.get("conv.sampler.poses")
    if angles is not None:
        expected = torch.arange(len(angles)) * (360.0 / len(angles))
        if not torch.allclose(angles.float(), expected, atol=1e-4):
            raise CheckpointError("conv rotation angles are not 360 p / P; cannot convert")
    return out
