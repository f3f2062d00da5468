"""Config setup and the ``main`` that ``train_net.py`` launches (kept here so tests can call it)."""

import argparse
import logging
import os

from detectron2.config import CfgNode
from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..config import build_cfg
from ..data.datasets import register_panoptic_dataset, register_synthetic_datasets
from ..utils.determinism import enable_deterministic_mode
from ..utils.write_errors import reporting_write_errors
from .config_value_checks import check_config_values
from .distributed import external_launch_from_env, leave_process_group, run_external_worker
from .output_dir import claim_output_dir_all_ranks, release_output_dir
from .trainer import Trainer

__all__ = [
    "build_cfg_with_datasets",
    "launch_main",
    "main",
    "register_config_datasets",
    "setup_cfg",
]

# Parent of every logger of this package (modules log to logging.getLogger(__name__)).
PROJECT_LOGGER = __name__.split(".")[0]

logger = logging.getLogger(__name__)


def register_config_datasets(cfg: CfgNode) -> list[str]:
    """Register the datasets a config describes: those listed in ``DATASETS.REGISTER_PANOPTIC``
    (their names are returned) and the synthetic sets of ``DATASETS.SYNTHETIC``'s size, count
    and seed.

    A name that is already registered is replaced, so a re-run with other paths takes effect.
    One name listed twice with different paths is refused (detectron2's catalog refuses a second
    registration too): silently keeping either entry would train or test on the wrong files.
    """
    entries = _checked_register_entries(cfg.DATASETS.REGISTER_PANOPTIC)
    synthetic = cfg.DATASETS.SYNTHETIC
    register_synthetic_datasets(
        synthetic.IMAGE_SIZE, synthetic.NUM_TRAIN, synthetic.NUM_VAL, synthetic.SEED
    )
    for entry in entries:
        register_panoptic_dataset(*entry)
    return [entry[0] for entry in entries]


def build_cfg_with_datasets(
    config_file: str | None, opts: list[str], device: str | None = None
) -> CfgNode:
    """The frozen config of a command that reads a config's datasets but trains nothing (demo,
    dataset browser, export): :func:`~panoptic_ext.config.build_cfg`, then
    :func:`register_config_datasets`. No output folder is claimed and no logging is set up;
    training and evaluation use :func:`setup_cfg`."""
    cfg = build_cfg(config_file, opts, device=device)
    register_config_datasets(cfg)
    return cfg


def _checked_register_entries(entries) -> list[tuple[str, ...]]:
    """``DATASETS.REGISTER_PANOPTIC`` entries, each name once; refuses malformed entries and
    names listed twice with different paths (an exact repeat is kept once)."""
    by_name: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if len(entry) != 4:
            raise ValueError(
                "DATASETS.REGISTER_PANOPTIC entries are (name, image_root, panoptic_root, "
                f"panoptic_json); got {entry!r}"
            )
        entry = tuple(entry)
        first = by_name.setdefault(entry[0], entry)
        if first != entry:
            raise ValueError(
                f"DATASETS.REGISTER_PANOPTIC registers the dataset '{entry[0]}' twice with "
                f"different files: {first[1:]} and {entry[1:]}; give each dataset its own name"
            )
    return list(by_name.values())


EVAL_CONFIG_NAME = "config_eval.yaml"


def _setup_evaluation(cfg: CfgNode, args: argparse.Namespace) -> None:
    """``default_setup`` for ``--eval-only``, which saves its config as ``config_eval.yaml``.

    ``default_setup`` writes ``OUTPUT_DIR/config.yaml``: evaluating a training's checkpoints in
    its own folder replaced the training's config with the evaluation's. Here it runs without
    an output folder, then the log files and the config copy are added under their own names.
    """
    no_output = cfg.clone()
    no_output.defrost()
    no_output.OUTPUT_DIR = None  # no file opened ("" would mean a log.txt in the cwd)
    rank = comm.get_rank()
    # The log files default_setup would have opened, attached first so that what it logs
    # (rank and world size, environment, arguments) is in log.txt too.
    for name in ("fvcore", "detectron2"):
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name=name, configure_stdout=False)
    default_setup(no_output, args)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, EVAL_CONFIG_NAME)
        with reporting_write_errors(path), PathManager.open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config from ``args.config_file`` and ``args.opts`` and set up logging.

    Unknown keys raise a ``KeyError`` naming the key and the yaml file (or the override). Without
    CUDA, ``MODEL.DEVICE`` falls back to "cpu" (with a warning) so every config runs anywhere.
    ``OUTPUT_DIR`` is claimed for this run before anything is written to it
    (:mod:`panoptic_ext.engine.output_dir`: lock; another run's checkpoints are refused unless
    ``args.resume`` or ``args.overwrite_output``). ``--eval-only`` saves its config as
    ``config_eval.yaml``, never over a training's ``config.yaml``. A training ``--resume`` from a
    checkpoint of another model is refused before anything is written
    (:meth:`Trainer.check_resume`).
    """
    cfg = build_cfg(args.config_file, args.opts)
    training = not getattr(args, "eval_only", False)
    check_config_values(cfg, training=training, world_size=comm.get_world_size())
    register_config_datasets(cfg)
    resume = getattr(args, "resume", False)
    claim_output_dir_all_ranks(
        cfg.OUTPUT_DIR,
        training=training,
        resume=resume,
        overwrite=getattr(args, "overwrite_output", False),
    )
    if resume and training:
        try:  # before default_setup writes config.yaml and the log
            Trainer.check_resume(cfg)
        except BaseException:
            release_output_dir(cfg.OUTPUT_DIR)
            raise
    if training:
        default_setup(cfg, args)
    else:
        _setup_evaluation(cfg, args)
    # default_setup sets up the "detectron2" and "fvcore" loggers only: without this, what our
    # modules log (e.g. the per-class PQ table) reaches neither the console nor log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name=PROJECT_LOGGER)
    enable_deterministic_mode(cfg)  # no-op unless cfg.DETERMINISTIC
    return cfg


def main(args: argparse.Namespace):
    """Train (or with ``--eval-only`` evaluate) the model described by ``args``."""
    cfg = setup_cfg(args)
    try:
        if args.eval_only:
            model = Trainer.build_model(cfg)
            checkpointer = Trainer.build_checkpointer(cfg, model, inference=True)
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            return Trainer.test(cfg, model)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    finally:
        release_output_dir(cfg.OUTPUT_DIR)


def _main_then_leave(args: argparse.Namespace):
    """:func:`main` in a process that detectron2's ``launch`` spawned, then a clean exit from
    the process group (see :func:`~panoptic_ext.engine.distributed.leave_process_group`)."""
    result = main(args)
    leave_process_group()
    return result


def launch_main(args: argparse.Namespace) -> None:
    """Run :func:`main` in every process of the job ``args`` describes.

    Under torchrun or a multi-task ``srun`` step the processes exist already and join the job
    from the launcher's environment (``--num-gpus`` / ``--num-machines`` are then taken from
    it); otherwise detectron2's ``launch`` spawns ``--num-gpus`` processes per machine.
    """
    placement = external_launch_from_env()
    if placement is None:
        launch(
            _main_then_leave,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
        return
    if args.num_machines != 1 or args.num_gpus not in (1, placement.local_world_size):
        logger.warning(
            "--num-gpus %d --num-machines %d ignored: %s started %d processes",
            args.num_gpus,
            args.num_machines,
            placement.source,
            placement.world_size,
        )
    run_external_worker(main, placement, (args,))
