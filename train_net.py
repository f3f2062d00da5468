#!/usr/bin/env python3
"""Train or evaluate a panoptic_ext model with detectron2's trainer.

    python train_net.py --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --num-gpus 8                       # one machine
    python train_net.py --config-file CFG --num-gpus 8 --num-machines 2 \\
        --machine-rank R --dist-url tcp://HOST0:PORT                          # each machine
    torchrun --nproc_per_node 8 train_net.py --config-file CFG                # or srun

The installed package offers the same as ``panoptic-ext-train``.
"""

import sys

from panoptic_ext.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
