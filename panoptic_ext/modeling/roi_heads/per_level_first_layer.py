"""The first parameter layer of a PANet head, applied to every pooled level, then fused.

:class:`PerLevelFirstLayerMixin` gives a detectron2 head a first parameter layer that is applied to
every level of an :class:`~.afp_pooler.AdaptiveFeaturePooler` stack (own weights per level, or
one shared layer) followed by a max/sum fusion over levels (:func:`fuse_levels`).
"""

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["FUSE_TYPES", "PerLevelFirstLayerMixin", "fuse_levels"]

FUSE_TYPES = ("max", "sum")


def fuse_levels(x: torch.Tensor, fuse: str) -> torch.Tensor:
    """Fuse a level-major stack ``(L, M, ...)`` into ``(M, ...)`` by element-wise max or sum."""
    if fuse == "max":
        return x.amax(dim=0)
    if fuse == "sum":
        return x.sum(dim=0)
    raise ValueError(f"MODEL.PANET.FUSE must be one of {FUSE_TYPES}, got {fuse!r}")


class PerLevelFirstLayerMixin:
    """First parameter layer of an AFP head: per level (``<name>_levels.{l}``) or shared.

    The layer keeps detectron2's name (``fc1`` / ``conv1`` / ``mask_fcn1``) when there is a
    single copy, so detectron2 checkpoints load unchanged; with per-level copies, loading a state
    dict that has the detectron2 name initialises every copy from it (see
    :meth:`_load_from_state_dict`).
    """

    def _setup_first_layer(
        self: nn.Module,
        name: str,
        num_levels: int,
        shared: bool,
        fuse: str,
        init: Callable[[nn.Module], None],
        fuse_before: bool = False,
    ) -> None:
        """Turn module ``name`` into ``num_levels`` independently initialised copies if needed.

        Args:
            name: attribute name of the detectron2 first layer (already built by the base head).
            num_levels: L, number of pooled levels the head receives (1 without AFP).
            shared: one layer applied to all levels (False: one copy per level).
            fuse: "max" or "sum" over levels.
            init: re-initialisation applied to each extra copy.
            fuse_before: fuse the pooled levels *before* a single first layer (paper Table 4
                "fu.fc1fc2": no extra layer cost, slightly lower AP than fusing after it).
        """
        if fuse not in FUSE_TYPES:
            raise ValueError(f"MODEL.PANET.FUSE must be one of {FUSE_TYPES}, got {fuse!r}")
        self._first_name = name
        self._num_levels = num_levels
        self._fuse = fuse
        self._fuse_before = fuse_before
        self._per_level = num_levels > 1 and not shared and not fuse_before
        if self._per_level:
            layer = getattr(self, name)
            copies = [layer] + [copy.deepcopy(layer) for _ in range(num_levels - 1)]
            for extra in copies[1:]:
                init(extra)
            delattr(self, name)
            setattr(self, f"{name}_levels", nn.ModuleList(copies))

    def _first_layer_fused(
        self: nn.Module,
        x: torch.Tensor,
        pre: Callable[[torch.Tensor], torch.Tensor],
        post: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Apply ``pre``, the first layer and ``post`` to every level, then fuse the levels.

        Args:
            x: (L, M, C, R, R) from :class:`AdaptiveFeaturePooler`, or (M, C, R, R) = one level.
            pre: layers before the first parameter layer (e.g. flatten), applied per level.
            post: its activation if it is a separate module (e.g. ``fc_relu1``).

        Returns:
            (M, ...) fused output of the first layer (and its activation).
        """
        if x.dim() == 4:
            x = x[None]
        if x.shape[0] != self._num_levels:
            raise ValueError(
                f"{type(self).__name__} expects {self._num_levels} pooled level(s) (MODEL.PANET.AFP"
                f" and MODEL.ROI_HEADS.IN_FEATURES), got input of shape {tuple(x.shape)}"
            )
        if self._fuse_before:
            return post(getattr(self, self._first_name)(pre(fuse_levels(x, self._fuse))))
        if self._per_level:
            layers = getattr(self, f"{self._first_name}_levels")
            out = torch.stack([post(layer(pre(level))) for layer, level in zip(layers, x)])
        else:
            num_levels, num_boxes = x.shape[:2]
            out = post(getattr(self, self._first_name)(pre(x.flatten(0, 1))))
            out = out.unflatten(0, (num_levels, num_boxes))
        return fuse_levels(out, self._fuse)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):
        # A detectron2 checkpoint has one first layer: copy each matching tensor into every level.
        if getattr(self, "_per_level", False):
            src = f"{prefix}{self._first_name}."
            levels = getattr(self, f"{self._first_name}_levels")
            own = levels[0].state_dict()
            for key in [k for k in state_dict if k.startswith(src)]:
                name = key[len(src) :]
                if name in own and own[name].shape == state_dict[key].shape:
                    value = state_dict.pop(key)
                    for i in range(len(levels)):
                        state_dict[f"{prefix}{self._first_name}_levels.{i}.{name}"] = value
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )
