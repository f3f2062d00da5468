"""Child process for the resume test: ``train_net.py`` plus an optional pause after an iteration.

    python tests/engine/resume_child.py --config-file CFG [--resume] [--pause-after I MARKER] K V...

With ``--pause-after I MARKER`` the run writes MARKER after iteration I (after that iteration's
checkpoint) and then blocks, so the parent can kill it at a known point.
"""

import sys
import time

from detectron2.engine import HookBase

from panoptic_ext.cli.train import argument_parser
from panoptic_ext.engine import Trainer, setup_cfg


class _PauseAfter(HookBase):
    def __init__(self, iteration: int, marker: str):
        self.iteration, self.marker = iteration, marker

    def after_step(self):
        if self.trainer.iter == self.iteration:
            with open(self.marker, "w") as f:
                f.write(str(self.iteration))
            time.sleep(600)  # killed by the parent long before this returns


def main() -> None:
    argv = sys.argv[1:]
    pause = None
    if "--pause-after" in argv:
        i = argv.index("--pause-after")
        pause = _PauseAfter(int(argv[i + 1]), argv[i + 2])
        del argv[i : i + 3]
    args = argument_parser().parse_args(argv)
    cfg = setup_cfg(args)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if pause is not None:
        trainer.register_hooks([pause])  # after the checkpointer: the checkpoint is on disk
    trainer.train()


if __name__ == "__main__":
    main()
