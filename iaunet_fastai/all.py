"Everything a user needs: `from iaunet_fastai.all import *` (hand-kept; not exported from a notebook)."
from .core import *
