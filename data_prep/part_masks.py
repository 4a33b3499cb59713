#!/usr/bin/env python
"""Precompute part masks for every image of a folder: same options as `iaunet masks` (see `--help`).

    python data_prep/part_masks.py Market-1501/bounding_box_train masks/market_train --label-dir jppnet/market_train
    python data_prep/part_masks.py Market-1501/bounding_box_train masks/market_prior --parser prior --n-workers 2

The logic lives in `iaunet_fastai.part_masks` (notebook nbs/04_part_masks.ipynb)."""
import sys
from iaunet_fastai.cli import run_subcommand
from iaunet_fastai.part_masks import masks_cli

if __name__ == '__main__':
    res = run_subcommand(masks_cli, sys.argv[1:], prog='data_prep/part_masks.py')
    sys.exit(res if isinstance(res, int) else 0)
