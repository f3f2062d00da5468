"""The semantic-label conventions a model can train on (``INPUT.SEM_SEG_FORMAT``)."""

import enum

__all__ = ["SemSegFormat"]


class SemSegFormat(str, enum.Enum):
    """Which labels the ``sem_seg`` target holds; members compare equal to the config strings.

    * ``THINGS_AS_ONE`` ("things_as_one"): things -> 0, stuff -> 1..S (Panoptic FPN,
      detectron2's separated convention);
    * ``ALL_CLASSES`` ("all_classes"): things -> 0..T-1, stuff -> T..T+S-1;
    * ``NONE`` ("none"): no semantic target.
    """

    THINGS_AS_ONE = "things_as_one"
    ALL_CLASSES = "all_classes"
    NONE = "none"
