"""Real q, k, v from pretrained models (``bench.py capture``) and the output drift of a model whose
attention is swapped (``bench.py drift``). Needs the optional extra: pip install 'attnbench[models]'."""
from attnbench.capture.errors import CaptureError

__all__ = ["CaptureError"]
