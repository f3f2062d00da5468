"""A resumable, reproducible training data loader and per-sample input checks.

The loader addresses samples by their *position* in the training stream: position ``p`` reads
image ``perm_e[p mod N]`` of the epoch ``e = p // N`` permutation (seeded by ``(SEED, e)``) and,
in deterministic mode, runs the mapper with RNGs seeded by ``(SEED, p)``. Rank ``r`` of ``W``
with ``b`` images per rank reads positions ``(i*W + r)*b ... + b-1`` at iteration ``i``, and
one data-loader worker builds that whole batch. The stream therefore depends on nothing but SEED,
and a resumed run starts at exactly the batch the interrupted run would have read next, whatever
the number of data-loader workers.
"""

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from ..utils.config_keys import config_value
from ..utils.determinism import derive_seed, seeded_rng
from ..utils.meta_arch import ROI_HEADS_CLASSES, SEM_SEG_HEAD_CLASSES, expected_class_counts

__all__ = [
    "BadSampleError",
    "CheckedMapper",
    "PositionalDataset",
    "ResumableLoader",
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
]

logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A training sample could not be loaded or holds invalid labels; names the file(s)."""


class CheckedMapper:
    """Wrap a dataset mapper: name the file on any loading error and validate label ranges.

    Checks on every mapped sample: ``sem_seg`` values lie in ``[0, num_sem_seg_classes)`` or equal
    ``ignore_value``; ``instances.gt_classes`` lie in ``[0, num_thing_classes)``.
    """

    def __init__(
        self,
        mapper: Callable[[dict], dict | None],
        num_sem_seg_classes: int | None = None,
        num_thing_classes: int | None = None,
        ignore_value: int = 255,
    ):
        self.mapper = mapper
        self.num_sem_seg_classes = num_sem_seg_classes
        self.num_thing_classes = num_thing_classes
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg: CfgNode, mapper: Callable[[dict], dict | None]) -> "CheckedMapper":
        """Label ranges from the model's class-count keys that apply to ``cfg.DATASETS.TRAIN``."""
        keys = set()
        for name in cfg.DATASETS.TRAIN:
            keys.update(expected_class_counts(cfg, name))

        def count(key: str) -> int | None:
            return config_value(cfg, key) if key in keys else None

        return cls(
            mapper,
            num_sem_seg_classes=count(SEM_SEG_HEAD_CLASSES),
            num_thing_classes=count(ROI_HEADS_CLASSES),
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        )

    @staticmethod
    def _describe(dataset_dict: dict) -> str:
        files = [f"image '{dataset_dict.get('file_name')}'"]
        for key in ("pan_seg_file_name", "sem_seg_file_name"):
            if dataset_dict.get(key):
                files.append(f"{key} '{dataset_dict[key]}'")
        return ", ".join(files)

    def __call__(self, dataset_dict: dict) -> dict | None:
        try:
            out = self.mapper(dataset_dict)
        except Exception as e:
            if str(dataset_dict.get("file_name")) in str(e):
                raise  # the mapper's message already names the file
            raise BadSampleError(
                f"Cannot load training sample ({self._describe(dataset_dict)}): "
                f"{type(e).__name__}: {e}"
            ) from e
        if out is None:
            return None
        sem_seg = out.get("sem_seg")
        if self.num_sem_seg_classes is not None and torch.is_tensor(sem_seg) and sem_seg.numel():
            values = torch.unique(sem_seg)
            bad = values[
                (values != self.ignore_value)
                & ((values < 0) | (values >= self.num_sem_seg_classes))
            ]
            if bad.numel():
                raise BadSampleError(
                    f"sem_seg of {self._describe(dataset_dict)} has label values {bad.tolist()} "
                    f"outside [0, {self.num_sem_seg_classes}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES) "
                    f"that are not the ignore value {self.ignore_value}."
                )
        instances = out.get("instances")
        if (
            self.num_thing_classes is not None
            and instances is not None
            and instances.has("gt_classes")
        ):
            classes = instances.gt_classes
            bad = classes[(classes < 0) | (classes >= self.num_thing_classes)]
            if bad.numel():
                raise BadSampleError(
                    f"instances of {self._describe(dataset_dict)} have gt_classes "
                    f"{sorted(set(bad.tolist()))} outside [0, {self.num_thing_classes}) "
                    "(MODEL.ROI_HEADS.NUM_CLASSES)."
                )
        return out


class ResumableTrainingSampler(Sampler):
    """Infinite stream of iteration numbers from ``start_iter`` (settable until iterated)."""

    def __init__(self, start_iter: int = 0):
        self.start_iter = start_iter

    def set_start_iter(self, start_iter: int) -> None:
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start_iter)


class PositionalDataset(Dataset):
    """Iteration number -> this rank's batch, built from stream positions (module docstring)."""

    def __init__(
        self,
        dataset: Dataset,
        mapper: Callable,
        seed: int,
        deterministic: bool,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        """
        Args:
            dataset: dataset dicts (map-style).
            mapper: dataset dict -> model input dict (or None to skip the image).
            seed: shuffling seed, shared by all ranks.
            deterministic: run the mapper with RNGs seeded from ``(seed, position)``.
            batch_size: images per rank and iteration.
            rank, world_size: this process and the number of processes.
        """
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.deterministic = deterministic
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self._perm_epoch, self._perm = -1, None

    def positions(self, iteration: int) -> range:
        """Stream positions this rank reads at ``iteration``."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def index_of(self, position: int) -> int:
        """Dataset index read at stream ``position``."""
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perm = torch.randperm(len(self.dataset), generator=generator)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def sample(self, position: int) -> dict:
        """The mapped sample at stream ``position``."""
        index = self.index_of(position)
        for attempt in range(len(self.dataset)):
            # A mapper may return None to skip a sample: take the next image, deterministically.
            dataset_dict = self.dataset[(index + attempt) % len(self.dataset)]
            rng = (
                seeded_rng(derive_seed(self.seed, position, attempt))
                if self.deterministic
                else contextlib.nullcontext()
            )
            with rng:
                out = self.mapper(dataset_dict)
            if out is not None:
                return out
        raise BadSampleError("The mapper returned None for every image of the training set.")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, iteration: int) -> list[dict]:
        return [self.sample(p) for p in self.positions(iteration)]


class ResumableLoader:
    """Iterable over per-rank batches (lists of mapped dicts) that can start at any iteration."""

    def __init__(self, loader: Any, sampler: ResumableTrainingSampler):
        self.loader = loader
        self.sampler = sampler

    def set_start_iter(self, start_iter: int) -> None:
        """Skip the batches of iterations ``< start_iter`` (call before iterating)."""
        self.sampler.set_start_iter(start_iter)

    def __iter__(self) -> Iterator[list[dict]]:
        return iter(self.loader)


def build_resumable_train_loader(
    cfg: CfgNode, mapper: Callable, dataset: list | None = None
) -> Any:
    """Drop-in for ``build_detection_train_loader(cfg, mapper=...)`` that resumes exactly.

    Wraps ``mapper`` in :class:`CheckedMapper`. Whole batches are built by one data-loader worker
    (round-robin over iterations), so the stream does not depend on ``NUM_WORKERS``; batches are
    formed by position, so ``DATALOADER.ASPECT_RATIO_GROUPING`` does not apply (images of a batch
    are padded to a common size as usual). Samplers other than ``TrainingSampler`` fall back to
    detectron2's loader, which restarts its stream on resume.

    Returns:
        :class:`ResumableLoader` yielding lists of ``IMS_PER_BATCH / world_size`` mapped dicts.
    """
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    checked = CheckedMapper.from_config(cfg, mapper)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN}: using detectron2's loader, "
            "which does not resume at the interrupted data position."
        )
        return build_detection_train_loader(cfg, mapper=checked, dataset=dataset)
    world, rank = comm.get_world_size(), comm.get_rank()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
            f"{world} processes."
        )
    # A random SEED (-1) is drawn once and shared so that all ranks shuffle alike.
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    batches = PositionalDataset(
        DatasetFromList(dataset, copy=True),
        checked,
        seed,
        cfg.DETERMINISTIC,
        cfg.SOLVER.IMS_PER_BATCH // world,
        rank,
        world,
    )
    sampler = ResumableTrainingSampler()
    num_workers = cfg.DATALOADER.NUM_WORKERS
    loader = torchdata.DataLoader(
        # Worker w builds iterations w, w + num_workers, ...; the loader yields them in order.
        ToIterableDataset(batches, sampler, shard_chunk_size=1),
        batch_size=None,  # items already are batches
        collate_fn=trivial_batch_collator,
        num_workers=num_workers,
        worker_init_fn=worker_init_reset_seed,
        prefetch_factor=2 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # leaves the global torch RNG alone
    )
    return ResumableLoader(loader, sampler)
