"""Everything a user needs: `from iaunet_fastai.all import *` (hand-kept; not exported from a notebook).
Like `from fastai.vision.all import *` (which it includes first: Learner, callbacks, DataBlock, Path, np, torch ...),
then every iaunet_fastai module, whose names win where both define one."""
from . import core as _quiet_imports   # first: its warning filters silence two known import warnings of fastai/torch
from fastai.vision.all import *
from .core import *
from . import config as reid_defaults   # every default written once (ARCH, IMG_SIZE, P, K, ...)
from .synthetic import *
from .datasets import *
from .images import *
from .transforms import *
from .sampler import *
from .items import *
from .preflight import *
from .workers import *
from .loaders import *      # reid_dls; `iaunet_fastai.data` re-exports these seven data modules
from .part_labels import *
from .part_parsers import *
from .part_masks import *
from .schp import *
from .layers import *
from .models import *
from .classifier import *
from .losses import *
from .metrics import *
from .verification import *   # open-set verification: verification_report, fit_verifier, learn.verify
from .callbacks import *
from .reid_learner import *   # ReIDLearner (dispatch, fit checks, validate, predict, to_distributed)
from .learner import *
from .inference import *
from .interpret import *
from .native import *
from .run_guards import *
from .train_callbacks import *   # checkpoint + ResumeState, StopOnSignal, RunCSVLogger
from .commands import *
from .gallery import *
from .targets import *        # cross-domain CLI runs (--sources/--targets), eval --verify
from .export import *         # ONNX export (iaunet export)
from .distributed import *     # imports fastai.distributed (Learner.distrib_ctx); fastai's Learner is left as fastai defines it
from fastai.learner import load_learner   # for learn.export() files (pickles: trusted files only)
