r"""Inverting metric neurons: the outputs of enough distance neurons determine the input.

* :func:`invert_euclidean` (multilateration, "GPS"): from ``d_j = ||x - c_j||_2`` with ``H >= D + 1``
  centres in general position. Subtracting consecutive squared distances cancels ``||x||^2``:
  ``d_i^2 - d_{i+1}^2 = 2 x . (c_{i+1} - c_i) + ||c_i||^2 - ||c_{i+1}||^2``, so with
  ``A = 2 (C[1:] - C[:-1])``, ``Z_i = ||c_i||^2 - ||c_{i+1}||^2``, ``Dd_i = d_i^2 - d_{i+1}^2``:
  ``x = A^+ (Dd - Z)`` (least squares; exact on exact distances).
* :func:`invert_angles`: from ``cos angle(x, c_j)`` the direction ``u = x / ||x||`` solves
  ``\hat C u = cos`` (``H >= D`` centres spanning ``R^D``); the length from the angle ``alpha`` at
  one reference point ``w`` between ``-w`` and ``x - w`` (triangle ``0, w, x``, law of sines):
  ``||x|| = ||w|| sin(alpha) / sin(pi - theta - alpha)``, ``theta`` the angle between ``u`` and ``w``.
* :func:`stereographic`: ``x' = z[:D] / (1 - z[D])`` inverts
  :func:`~pellucid.nn.metric.distance.inverse_stereographic`.
"""

from __future__ import annotations

import torch

from pellucid.errors import InvalidInputError

__all__ = ["invert_angles", "invert_euclidean", "stereographic"]


def _check_finite(name: str, t: torch.Tensor, dim: int) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != dim:
        raise InvalidInputError(f"{name} must be a {dim}-D float tensor, got "
                                f"{getattr(t, 'shape', type(t).__name__)}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{name} contains NaN or inf")


def _check_rank(matrix: torch.Tensor, needed: int, what: str) -> None:
    s = torch.linalg.svdvals(matrix.double())
    tol = s.max() * max(matrix.shape) * torch.finfo(torch.float64).eps * 1e3 if s.numel() else 0
    rank = int((s > tol).sum())
    if rank < needed:
        raise InvalidInputError(f"{what} are degenerate: they span {rank} of {needed} dimensions "
                                "(e.g. collinear or coplanar); use centres in general position")


def invert_euclidean(distances: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``x`` from Euclidean distances ``(B, H)`` to ``centres`` ``(H, D)``; needs ``H >= D + 1``."""
    _check_finite("distances", distances, 2)
    _check_finite("centres", centres, 2)
    n_centres, dim = centres.shape
    if distances.shape[1] != n_centres:
        raise InvalidInputError(f"distances have {distances.shape[1]} columns but there are "
                                f"{n_centres} centres")
    if n_centres < dim + 1:
        raise InvalidInputError(f"{n_centres} centres cannot determine a point in {dim} dimensions; "
                                f"need at least D + 1 = {dim + 1}")
    if bool((distances < 0).any()):
        raise InvalidInputError("distances must be >= 0")
    a = 2 * (centres[1:] - centres[:-1])  # (H-1, D)
    _check_rank(a, dim, "centres")
    sq_c = centres.pow(2).sum(1)
    z = sq_c[:-1] - sq_c[1:]  # (H-1,)
    dd = distances[:, :-1].pow(2) - distances[:, 1:].pow(2)  # (B, H-1)
    return torch.linalg.lstsq(a, (dd - z).T).solution.T  # (B, D)


def invert_angles(cosines: torch.Tensor, centres: torch.Tensor, reference: torch.Tensor,
                  reference_cosine: torch.Tensor) -> torch.Tensor:
    r"""``x`` from ``cos angle(x, c_j)`` ``(B, H)`` plus one reference measurement.

    ``reference`` ``w`` ``(D,)`` is a point off the origin; ``reference_cosine`` ``(B,)`` is
    ``cos`` of the angle at ``w`` between ``-w`` and ``x - w``. Needs ``H >= D`` centres spanning
    ``R^D`` and ``x`` not on the line through ``0`` and ``w``.
    """
    _check_finite("cosines", cosines, 2)
    _check_finite("centres", centres, 2)
    _check_finite("reference_cosine", reference_cosine, 1)
    n_centres, dim = centres.shape
    if cosines.shape[1] != n_centres:
        raise InvalidInputError(f"cosines have {cosines.shape[1]} columns but there are {n_centres} centres")
    if n_centres < dim:
        raise InvalidInputError(f"{n_centres} angles cannot determine a direction in {dim} "
                                f"dimensions; need at least D = {dim} centres")
    if not isinstance(reference, torch.Tensor) or reference.shape != (dim,) or not bool(reference.norm() > 0):
        raise InvalidInputError(f"reference must be a non-zero point of shape ({dim},)")
    unit = centres / centres.norm(dim=1, keepdim=True)  # (H, D)
    _check_rank(unit, dim, "centres")
    direction = torch.linalg.lstsq(unit, cosines.T).solution.T  # (B, D), ||.|| = 1 on exact data
    direction = direction / direction.norm(dim=1, keepdim=True)
    w_norm = reference.norm()
    theta = (direction @ reference / w_norm).clamp(-1, 1).acos()  # angle at the origin
    alpha = reference_cosine.clamp(-1, 1).acos()  # angle at w
    length = w_norm * torch.sin(alpha) / torch.sin(torch.pi - theta - alpha)
    return direction * length[:, None]


def stereographic(z: torch.Tensor) -> torch.Tensor:
    """``x = z[:, :D] / (1 - z[:, D])``: the point of ``R^D`` whose inverse projection is ``z``."""
    _check_finite("z", z, 2)
    if bool((z[:, -1] >= 1).any()):
        raise InvalidInputError("z lies on the pole (z[D] = 1), which is the point at infinity")
    return z[:, :-1] / (1 - z[:, -1:])
