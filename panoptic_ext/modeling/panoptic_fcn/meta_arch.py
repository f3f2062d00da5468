"""``PanopticFCN`` meta-architecture (Li et al., "Fully Convolutional Networks for Panoptic
Segmentation", CVPR 2021), batched over images for training and inference."""

from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...layers.conv_bn_fold import fold_frozen_batchnorm
from ...layers.modulated_deform_conv import ModulatedDeformConvBlock
from .encoder import FeatureEncoder  # noqa: F401 (registers the default encoder)
from .heads import KernelEmbedding, KernelHead, PositionHead  # noqa: F401 (registers)
from .inference import InferenceSettings, LowResPredictions, lowres_predictions
from .losses import LossSettings, panoptic_fcn_losses
from .postprocess import postprocess_image
from .registry import build_feature_encoder, build_kernel_head, build_position_head
from .targets import TargetSettings, build_targets, collate_ground_truth

__all__ = ["PanopticFCN", "HeadOutputs", "NetworkOptions"]


def _head_channels(cfg: CfgNode, shapes: dict[str, ShapeSpec]) -> int:
    """Width of the head levels; raises ``ValueError`` naming the keys of a bad feature choice."""
    p = cfg.MODEL.PANOPTIC_FCN
    wanted = list(p.SEMANTIC_FPN.IN_FEATURES) + list(p.HEAD_IN_FEATURES)
    missing = [f for f in wanted if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.PANOPTIC_FCN.*IN_FEATURES name {missing}, which backbone "
            f"{cfg.MODEL.BACKBONE.NAME} does not output (it gives {sorted(shapes)})"
        )
    head_channels = {shapes[f].channels for f in p.HEAD_IN_FEATURES}
    if len(head_channels) != 1:
        raise ValueError(
            f"MODEL.PANOPTIC_FCN.HEAD_IN_FEATURES levels have different widths {head_channels}"
        )
    return head_channels.pop()


def _build_heads(cfg: CfgNode, shapes: dict[str, ShapeSpec]) -> dict[str, nn.Module]:
    """Encoder, position and kernel heads (from their registries) and the two kernel generators
    (in this order: it is the order of their random initialisation)."""
    level = ShapeSpec(channels=_head_channels(cfg, shapes))
    p = cfg.MODEL.PANOPTIC_FCN
    kernel_dim, encoded_dim = p.KERNEL_HEAD.CONVS_DIM, p.FEATURE_ENCODER.CONVS_DIM
    return {
        "encoder": build_feature_encoder(cfg, shapes),
        "position_head": build_position_head(cfg, level),
        "kernel_head": build_kernel_head(cfg, level),
        "thing_generator": KernelEmbedding(kernel_dim, encoded_dim),
        "stuff_generator": KernelEmbedding(kernel_dim, encoded_dim),
    }


@dataclass
class HeadOutputs:
    """Raw outputs of one forward pass (L head levels, batch N).

    Attributes:
        center_logits: L x (N, T, H_l, W_l); region_logits: L x (N, S, H_l, W_l);
        kernel_maps: L x (N, D, H_l, W_l); encode_feat: (N, E, Hf, Wf).
    """

    center_logits: list[torch.Tensor]
    region_logits: list[torch.Tensor]
    kernel_maps: list[torch.Tensor]
    encode_feat: torch.Tensor


@dataclass(frozen=True)
class NetworkOptions:
    """Speed options of the network (``MODEL.PANOPTIC_FCN.INFERENCE`` keys in brackets); none
    changes the maths beyond float rounding."""

    deform_conv_gather: bool = False  # DEFORM_CONV_GATHER
    fold_frozen_bn: bool = False  # FOLD_FROZEN_BN
    channels_last: bool = False  # CHANNELS_LAST

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "NetworkOptions":
        inf = cfg.MODEL.PANOPTIC_FCN.INFERENCE
        return cls(
            deform_conv_gather=inf.DEFORM_CONV_GATHER,
            fold_frozen_bn=inf.FOLD_FROZEN_BN,
            channels_last=inf.CHANNELS_LAST,
        )


@META_ARCH_REGISTRY.register()
class PanopticFCN(nn.Module):
    """Backbone -> feature encoder (stride 4, E channels) + per-level position and kernel heads.

    Training: targets for the whole batch (``targets.py``) and four losses (``losses.py``).
    Inference: returns per image ``{"panoptic_seg": (int32 HxW, segments_info),
    "instances": Instances, "sem_seg": (S, H, W) stuff probabilities}``.
    Thing ``category_id`` is the contiguous thing id 0..T-1, stuff ``category_id`` the contiguous
    stuff id (1..S-1 with the merged "things" channel 0), i.e. detectron2's *separated*
    panoptic convention, so ``COCOPanopticEvaluator`` works directly.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        encoder: nn.Module,
        position_head: nn.Module,
        kernel_head: nn.Module,
        thing_generator: KernelEmbedding,
        stuff_generator: KernelEmbedding,
        head_in_features: list[str],
        pixel_mean: list[float],
        pixel_std: list[float],
        ignore_value: int,
        with_thing: bool,
        target_settings: TargetSettings,
        loss_settings: LossSettings,
        inference: InferenceSettings,
        network_options: NetworkOptions = NetworkOptions(),
    ):
        """
        Args:
            backbone / encoder / position_head / kernel_head / thing_generator /
                stuff_generator: the model parts (encoder and heads: see :mod:`.registry` for
                what each returns).
            head_in_features: backbone levels of the position and kernel heads.
            pixel_mean, pixel_std: per-channel normalisation, in the model's input order.
            ignore_value: void label of ``sem_seg`` targets.
            with_thing: stuff channel 0 is the merged "things" class (sem_seg "things_as_one").
            target_settings: settings of :func:`targets.build_targets`.
            loss_settings: settings of :func:`losses.panoptic_fcn_losses`.
            inference: thresholds and caps of inference.
            network_options: speed options (see :class:`NetworkOptions`).
        """
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.position_head = position_head
        self.kernel_head = kernel_head
        self.thing_generator = thing_generator
        self.stuff_generator = stuff_generator
        self.head_in_features = head_in_features
        self.ignore_value = ignore_value
        self.with_thing = with_thing
        self.target_settings = target_settings
        self.loss_settings = loss_settings
        self.inference_settings = inference
        smooth = inference.peak_smooth_sizes
        if len(smooth) != len(head_in_features):
            raise ValueError(
                "MODEL.PANOPTIC_FCN.POSITION_HEAD.THING.PEAK_SMOOTH_SIZES has "
                f"{len(smooth)} entries but HEAD_IN_FEATURES has {len(head_in_features)} levels"
            )
        scales = target_settings.instance_scales
        if len(scales) != len(head_in_features):
            raise ValueError(
                f"MODEL.PANOPTIC_FCN.KERNEL_HEAD.INSTANCE_SCALES has {len(scales)} ranges but "
                f"HEAD_IN_FEATURES has {len(head_in_features)} levels"
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.network_options = network_options
        self._apply_network_options()

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        p = cfg.MODEL.PANOPTIC_FCN
        return {
            "backbone": backbone,
            **_build_heads(cfg, backbone.output_shape()),
            "head_in_features": list(p.HEAD_IN_FEATURES),
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "ignore_value": p.IGNORE_VALUE,
            "with_thing": p.POSITION_HEAD.STUFF.WITH_THING,
            "target_settings": TargetSettings.from_config(cfg),
            "loss_settings": LossSettings.from_config(cfg),
            "inference": InferenceSettings.from_config(cfg),
            "network_options": NetworkOptions.from_config(cfg),
        }

    def _apply_network_options(self) -> None:
        for m in self.modules():
            if isinstance(m, ModulatedDeformConvBlock):
                m.gather_inference = self.network_options.deform_conv_gather
        if self.network_options.fold_frozen_bn:
            fold_frozen_batchnorm(self.backbone)

    def train(self, mode: bool = True) -> "PanopticFCN":
        """Also switches the parameters' memory format with ``CHANNELS_LAST`` (channels-last in
        eval mode only, so training is unchanged)."""
        super().train(mode)
        if self.network_options.channels_last:
            self.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise the (C, H, W) images and pad them into one batch (size_divisibility)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """
        Args:
            batched_inputs: detectron2 format, per image "image" (C, H, W) and, for training,
                "instances" (gt_masks BitMasks, gt_boxes, gt_classes; may be empty or absent)
                and "sem_seg" (H, W) int64 (absent = all void). Optional "height"/"width".
        Returns:
            training: dict of losses; inference: list of per-image result dicts.
        """
        images = self.preprocess_image(batched_inputs)
        if not self.training:
            return self.inference(batched_inputs, images)
        return self.losses(batched_inputs, images, self.forward_heads(images.tensor))

    def forward_heads(self, images: torch.Tensor) -> HeadOutputs:
        """Normalised, padded (N, 3, H, W) images -> raw head outputs (tensors only)."""
        features = self.backbone(images)
        encode_feat = self.encoder(features)
        center_logits, region_logits, kernel_maps = [], [], []
        for name in self.head_in_features:
            centers, regions = self.position_head(features[name])
            center_logits.append(centers)
            region_logits.append(regions)
            kernel_maps.append(self.kernel_head(features[name]))
        return HeadOutputs(center_logits, region_logits, kernel_maps, encode_feat)

    def predict(self, images: torch.Tensor) -> LowResPredictions:
        """The network at inference: normalised, padded (N, 3, H, W) images -> batched low-res
        predictions (tensors only, fixed shapes for a given input size; what an exporter
        exports). :func:`postprocess.postprocess_image` turns them into detectron2 outputs."""
        if self.network_options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.forward_heads(images)
        return lowres_predictions(
            out.center_logits,
            out.region_logits,
            out.kernel_maps,
            out.encode_feat,
            self.thing_generator,
            self.stuff_generator,
            self.inference_settings,
        )

    def losses(
        self,
        batched_inputs: list[dict[str, Any]],
        images: ImageList,
        outputs: HeadOutputs,
    ) -> dict[str, torch.Tensor]:
        """Targets for the batch, then the four losses (see ``losses.py``)."""
        with torch.no_grad():
            gt = collate_ground_truth(
                [x.get("instances") for x in batched_inputs],
                [x.get("sem_seg") for x in batched_inputs],
                tuple(images.tensor.shape[-2:]),
                self.ignore_value,
                self.device,
            )
            targets = build_targets(
                gt,
                [tuple(c.shape[-2:]) for c in outputs.center_logits],
                len(batched_inputs),
                self.target_settings,
            )
        return panoptic_fcn_losses(
            outputs.center_logits,
            outputs.region_logits,
            outputs.kernel_maps,
            outputs.encode_feat,
            targets,
            self.thing_generator,
            self.stuff_generator,
            self.loss_settings,
        )

    @torch.no_grad()
    def inference(
        self, batched_inputs: list[dict[str, Any]], images: ImageList
    ) -> list[dict[str, Any]]:
        """Batched network and low-res predictions; per-image full-resolution outputs."""
        pred = self.predict(images.tensor)
        stride = images.tensor.shape[-1] // pred.thing_probs.shape[-1]
        results = []
        for i, x in enumerate(batched_inputs):  # output sizes differ per image
            image_size = tuple(images.image_sizes[i])
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(
                postprocess_image(pred, i, stride, image_size, out_size, self.inference_settings)
            )
        return results
