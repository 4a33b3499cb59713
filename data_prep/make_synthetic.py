#!/usr/bin/env python
"""Write the synthetic reID world (Market-1501, MARS, DukeMTMC-VideoReID layouts + LIP label PNGs).

    python data_prep/make_synthetic.py --path data/synth --preset small --seed 0
    python data_prep/make_synthetic.py --help

A thin wrapper: the logic is `iaunet_fastai.synthetic.make_synthetic_reid` (same options as `iaunet synth`).
"""
import sys
from iaunet_fastai.synthetic import synth_cli
from iaunet_fastai.cli import run_subcommand

if __name__ == '__main__':
    sys.exit(run_subcommand(synth_cli, sys.argv[1:], prog='make_synthetic.py'))
