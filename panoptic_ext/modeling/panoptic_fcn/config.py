"""Config keys of Panoptic FCN (all under ``MODEL.PANOPTIC_FCN``).

Defaults are the paper / official R50-1x settings, including the numbers the official code
hard-codes (peak pool sizes, per-level candidate cap, score floor, guidance threshold).
"""

from detectron2.config import CfgNode

from ...utils.config_keys import add_keys

__all__ = ["add_panoptic_fcn_config"]


def add_panoptic_fcn_config(cfg: CfgNode) -> None:
    """Add ``MODEL.PANOPTIC_FCN`` and its sub-nodes to ``cfg`` (existing keys are kept)."""
    root = "MODEL.PANOPTIC_FCN"
    add_keys(
        cfg,
        root,
        {
            # Label of void pixels in the ``sem_seg`` target (mapper's ignore value).
            "IGNORE_VALUE": 255,
            # Backbone levels the position and kernel heads run on (shared weights over levels).
            "HEAD_IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
        },
    )
    add_keys(
        cfg,
        f"{root}.SEMANTIC_FPN",
        {
            # Backbone levels merged by the semantic-FPN encoder (Panoptic FPN's sem-seg branch).
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            # Width of the semantic-FPN towers.
            "CONVS_DIM": 256,
            # Output stride of the merged (high-resolution) feature.
            "COMMON_STRIDE": 4,
            # Norm of the towers ("GN" = GroupNorm(32)).
            "NORM": "GN",
        },
    )
    add_keys(
        cfg,
        f"{root}.FEATURE_ENCODER",
        {
            # Registered encoder class (PANOPTIC_FCN_ENCODER_REGISTRY, see registry.py).
            "NAME": "FeatureEncoder",
            # Conv layers of the encoder on top of the semantic FPN.
            "NUM_CONVS": 3,
            # E: width of the encoded feature = length of every dynamic kernel (256 in "Star").
            "CONVS_DIM": 64,
            # Modulated deformable convs in the encoder ("Star" configs).
            "DEFORM": False,
            # Append normalised (y, x) coordinate channels to the input (CoordConv).
            "COORD": True,
            # Norm of the encoder convs ("" = none, convs get a bias).
            "NORM": "",
        },
    )
    add_keys(
        cfg,
        f"{root}.POSITION_HEAD",
        {
            # Registered position-head class (PANOPTIC_FCN_POSITION_HEAD_REGISTRY).
            "NAME": "PositionHead",
            # Conv layers of the shared position tower.
            "NUM_CONVS": 3,
            # Width of the position tower.
            "CONVS_DIM": 256,
            # Norm of the position tower.
            "NORM": "GN",
            # Modulated deformable convs (DCNv2) in the tower (paper: +1.4 PQ on stuff).
            "DEFORM": True,
            # CoordConv on the position-head input.
            "COORD": False,
        },
    )
    add_keys(
        cfg,
        f"{root}.POSITION_HEAD.THING",
        {
            # Object center: "mass" (mean of mask pixel coordinates) or "box" (box center).
            "CENTER_TYPE": "mass",
            # k of the weighted dice loss: top-k guided positions per object and level.
            "POS_NUM": 7,
            # Number of thing classes (center-heatmap channels).
            "NUM_CLASSES": 80,
            # Prior bias of both heatmap predictors (-log((1 - 0.1) / 0.1)).
            "BIAS_VALUE": -2.19,
            # IoU used by the CornerNet Gaussian-radius rule.
            "MIN_OVERLAP": 0.7,
            # Gaussian sigma = diameter / GAUSSIAN_SIGMA.
            "GAUSSIAN_SIGMA": 3.0,
            # Test: minimum (smoothed) center score of a candidate.
            "THRES": 0.05,
            # Test: final cap on instances per image.
            "TOP_NUM": 100,
            # Test: candidate cap per level (official: TOP_NUM // 2).
            "LEVEL_TOP_NUM": 50,
            # Test: average-pool size that smooths the center map, one per head level
            # (official hard-codes [3, 3, 3, 5, 5] for P3..P7).
            "PEAK_SMOOTH_SIZES": [3, 3, 3, 5, 5],
            # Test: max-pool size of the peak test.
            "PEAK_POOL_SIZE": 3,
            # Train: a level pixel guides an object when its resized GT mask value exceeds this.
            "GUIDANCE_THRES": 0.1,
            # Train: stop the dice gradient flowing into the center head through the top-k
            # weights (official: not detached, i.e. False).
            "DETACH_GUIDANCE": False,
        },
    )
    add_keys(
        cfg,
        f"{root}.POSITION_HEAD.STUFF",
        {
            # Number of stuff-region channels; with WITH_THING it includes the merged "things"
            # class 0 (semantic target INPUT.SEM_SEG_FORMAT "things_as_one").
            "NUM_CLASSES": 54,
            # Stuff branch predicts the merged "things" class 0 (never painted as a segment).
            "WITH_THING": True,
            # Test: minimum mean region score of a stuff candidate.
            "THRES": 0.05,
            # Train: level stuff-target values below this are set to 0.
            "GT_THRES": 0.5,
        },
    )
    add_keys(
        cfg,
        f"{root}.KERNEL_HEAD",
        {
            # Registered kernel-head class (PANOPTIC_FCN_KERNEL_HEAD_REGISTRY).
            "NAME": "KernelHead",
            # sqrt(box area) range (input pixels, inclusive) of objects trained at each head level;
            # ranges overlap, so an object can train two levels.
            "INSTANCE_SCALES": [[1, 64], [32, 128], [64, 256], [128, 512], [256, 2048]],
            # Conv layers of the shared kernel tower.
            "NUM_CONVS": 3,
            # Width of the kernel tower = width D of the kernel map.
            "CONVS_DIM": 256,
            # Norm of the kernel tower.
            "NORM": "GN",
            # Modulated deformable convs in the kernel tower.
            "DEFORM": False,
            # CoordConv on the kernel-head input.
            "COORD": True,
        },
    )
    add_keys(
        cfg,
        f"{root}.LOSS",
        {
            # Weight of both focal position losses.
            "POSITION_WEIGHT": 1.0,
            # Weight of both dice segmentation losses.
            "SEGMENT_WEIGHT": 3.0,
            # Focal loss alpha.
            "FOCAL_ALPHA": 0.25,
            # Focal loss gamma.
            "FOCAL_GAMMA": 2.0,
        },
    )
    add_keys(
        cfg,
        f"{root}.INFERENCE",
        {
            # Mask probability threshold (maskness and final binary masks).
            "INST_THRES": 0.4,
            # Kernel fusion: cosine similarity at or above which two thing kernels are merged.
            "SIMILAR_THRES": 0.9,
            # Kernel fusion only merges kernels of the same class.
            "CLASS_SPECIFIC": True,
            # Instances whose maskness-rescored score is below this are dropped (official: 0.05).
            "SCORE_FLOOR": 0.05,
            # Speed only, same maths up to float rounding (MODEL_ZOO.md, Panoptic FCN speed).
            # Without autograd, deformable convs as one gather (embedding_bag) + one matmul
            # instead of torchvision's deform_conv2d (CPU: ~3x faster per DCN layer; outputs
            # match the official code within the comparison tool's tolerances).
            "DEFORM_CONV_GATHER": True,
            # Without autograd, FrozenBatchNorm folded into the preceding conv (off: < 1 % on
            # CPU, and the rounding change exceeds the comparison tool's tolerances).
            "FOLD_FROZEN_BN": False,
            # Eval mode in channels-last memory format (oneDNN convs without layout reorders;
            # CPU: ~7 % faster; off: its rounding exceeds the comparison tool's tolerances).
            "CHANNELS_LAST": False,
        },
    )
    add_keys(
        cfg,
        f"{root}.INFERENCE.COMBINE",
        {
            # Produce ``panoptic_seg``.
            "ENABLE": True,
            # A thing is skipped when more than this fraction of it is already painted.
            "OVERLAP_THRESH": 0.5,
            # Stuff regions smaller than this (output pixels) are left void.
            "STUFF_AREA_LIMIT": 4096,
            # Minimum thing score to enter the panoptic map.
            "INST_THRESH": 0.2,
        },
    )
