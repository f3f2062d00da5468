"""``Trainer``: detectron2's DefaultTrainer with our mapper, evaluator table and CPU-safe DDP."""

import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import SafeCheckpointer
from ..data import PanopticDatasetMapper
from ..data.train_loader import CheckedMapper, build_resumable_train_loader
from ..evaluation.ground_truth import check_test_ground_truth
from ..layers.roi_align_grad import use_sparse_roi_align_grad
from ..solver import build_lr_scheduler
from .class_count_checks import check_class_counts
from .config_value_checks import check_stuff_area_limit
from .evaluator_table import build_evaluators
from .hooks import ExactResumeHook, NanGuardHook
from .writers import build_writers

__all__ = ["Trainer", "wrap_ddp"]

logger = logging.getLogger(__name__)


def wrap_ddp(model: nn.Module) -> nn.Module:
    """DistributedDataParallel when there are several processes, on GPU or CPU.

    detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]``, which DDP rejects for a
    CPU module; with gloo on CPU we pass ``device_ids=None``.
    """
    on_cuda = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_cuda else None
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


class Trainer(DefaultTrainer):
    """DefaultTrainer that feeds :class:`PanopticDatasetMapper` and picks evaluators by table."""

    def __init__(self, cfg: CfgNode):
        # Same construction order as DefaultTrainer; only the DDP wrapping and the checkpointer
        # factory differ, so DefaultTrainer.__init__ is not called.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # The test sets are evaluated after training at the latest: their ground truth is
        # refused now rather than after the last iteration.
        check_test_ground_truth(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train, then return the last evaluation results (empty dict if none ran)."""
        if self.start_iter >= self.max_iter:
            self._save_missing_final()
        super().train()
        return getattr(self, "_last_eval_results", {})

    def _save_missing_final(self) -> None:
        """A run resumed at ``MAX_ITER`` runs no iteration, so no hook saves ``model_final.pth``:
        after a kill during that very save the run would end without it. Save it here."""
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if not comm.is_main_process() or PathManager.exists(final):
            return
        logger.warning(
            f"{final} is missing (its save was interrupted); writing it from the checkpoint of "
            f"iteration {self.iter}, as SOLVER.MAX_ITER {self.max_iter} is reached"
        )
        self.checkpointer.save("model_final", iteration=self.iter)

    def build_writers(self):
        # detectron2's writers; metrics.json continues on a new line after a cut record.
        return build_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    @classmethod
    def build_checkpointer(
        cls, cfg: CfgNode, model: nn.Module, *, inference: bool = False, **checkpointables
    ) -> DetectionCheckpointer:
        """The checkpointer used for training, resuming and ``--eval-only`` loading.

        Safe loading (no code from pickles), atomic saves, fallback to the previous checkpoint,
        weights that cannot be right refused. ``inference``: evaluation, demo or export, which
        refuse empty ``MODEL.WEIGHTS`` and heads left at random initialisation.
        """
        return SafeCheckpointer.from_config(
            cfg, model, cfg.OUTPUT_DIR, inference=inference, **checkpointables
        )

    @classmethod
    def check_resume(cls, cfg: CfgNode) -> None:
        """Refuse ``--resume`` when the checkpoint it would continue from was saved by another
        model than ``cfg`` builds (naming the tensors and the changed config keys).

        Builds the model on the CPU and reads the checkpoint; writes nothing, so it runs before
        the run's config and log are written.
        """
        if not SafeCheckpointer(nn.Module(), cfg.OUTPUT_DIR).has_checkpoint():
            return  # nothing to resume: MODEL.WEIGHTS initialises the run as usual
        cpu_cfg = cfg.clone()
        cpu_cfg.defrost()
        cpu_cfg.MODEL.DEVICE = "cpu"
        model = super().build_model(cpu_cfg)
        cls.build_checkpointer(cfg, model).check_resume()

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        check_class_counts(cfg)
        model = super().build_model(cfg)
        if cfg.MODEL.ROI_HEADS.SPARSE_ROI_ALIGN_GRAD:
            use_sparse_roi_align_grad(model)  # acts on CPU in training only
        return model

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        # detectron2's schedules plus "WarmupPolyLR" (Panoptic FCN's official schedule).
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Training batches, every sample's labels range-checked.

        In deterministic mode, or without aspect-ratio grouping, the loader resumes at the
        interrupted batch (exact resume). Otherwise detectron2's loader keeps grouping images by
        aspect ratio (less padding for COCO-like data) and restarts its stream on resume.
        """
        mapper = PanopticDatasetMapper(cfg, is_train=True)
        if cfg.DETERMINISTIC or not cfg.DATALOADER.ASPECT_RATIO_GROUPING:
            return build_resumable_train_loader(cfg, mapper=mapper)
        return build_detection_train_loader(cfg, mapper=CheckedMapper.from_config(cfg, mapper))

    def build_hooks(self):
        # Exact resume (RNG states, per-iteration seeding) and a NaN guard that names the loss.
        return super().build_hooks() + [
            ExactResumeHook(self.cfg.SEED, self.cfg.DETERMINISTIC),
            NanGuardHook(),
        ]

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's test loader, after checking the stuff area limit against the images."""
        mapper = PanopticDatasetMapper(cfg, is_train=False)
        if cfg.MODEL.LOAD_PROPOSALS:  # detectron2 pairs the proposal files itself
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        # The dicts detectron2's loader would read; read once and used for both.
        records = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        check_stuff_area_limit(cfg, records, dataset_name)
        return build_detection_test_loader(
            records, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None):
        # Evaluation runs in inference mode; no autograd state is kept.
        with torch.no_grad():
            return super().test(cfg, model, evaluators)
