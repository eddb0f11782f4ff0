"""Logical semantic features: a soft OR within a class's own block, AND-NOT over the others (Sec. 3.4)."""

from __future__ import annotations

import torch
from torch import nn

from pellucid.nn.semantic.base import SemanticFeatures


class LogicalFeatures(SemanticFeatures):
    r"""``logit_c = max_p <x, g_{c,p}>`` with roll poses of the top entry of class c's own block.

    The ``D = C * k`` inputs split into ``C`` blocks of ``k``; block ``c`` belongs to class ``c``.
    Pose ``p`` of class ``c`` keeps only the largest entry :math:`v_c` of :math:`f_c`'s own block,
    rolled by ``p`` within the block; the other blocks of :math:`f_c` are unchanged. For
    :math:`v_c \ge 0` this is :math:`v_c \max_k x_{c,k} + \sum_{c' \ne c} <f_{c,c'}, x_{c'}>`.
    No bias, no activation; unconstrained (only weight decay).

    For excitation pullbacks its one site is the max over the roll poses (a max-type pool); the
    top-entry selection in :meth:`posed_weights` acts on the weights, not on the input.
    """

    def __init__(self, n_classes: int = 2, block: int = 4, own: float = 0.4, other: float = -0.1) -> None:
        super().__init__()
        f = torch.full((n_classes, n_classes, block), other)
        f[torch.arange(n_classes), torch.arange(n_classes), 0] = own
        self.features = nn.Parameter(f.reshape(n_classes, n_classes * block))  # (C, D)
        self.n_classes, self.block = n_classes, block
        # roll_index[p, j] = (j - p) mod k: entry j of pose p comes from entry j - p
        j = torch.arange(block)
        self.register_buffer("roll_index", (j[None, :] - j[:, None]) % block, persistent=False)

    def posed_weights(self) -> torch.Tensor:
        c, k = self.n_classes, self.block
        blocks = self.features.view(c, c, k)  # (C, C blocks, k)
        diagonal = torch.arange(c, device=blocks.device)
        own = blocks[diagonal, diagonal]  # (C, k)
        top = own * nn.functional.one_hot(own.argmax(dim=1), k).to(own)  # only v_c kept (and trained)
        rolled = top[:, self.roll_index]  # (C, P, k)
        is_own = torch.eye(c, dtype=torch.bool, device=own.device)[:, None, :, None]  # (C, 1, C, 1)
        posed = torch.where(is_own, rolled[:, :, None, :], blocks[:, None])  # (C, P, C, k)
        return posed.reshape(c, k, c * k)  # (C, P, D)

    def match(self, x: torch.Tensor, posed: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,cpd->bcp", x, posed)  # (B, C, P)
