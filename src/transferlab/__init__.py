"""transferlab: turn a pretrained transformer into a task model by transfer learning, and ship it."""

import os

# Never reach a model hub: every model and dataset comes from a local directory or an installed package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

# transformers' Auto classes and pipeline() load saved transferlab models (task heads, EfficientNet-Lite, VGG) once
# transferlab is imported; the registration itself waits until transformers is imported (so `import transferlab`
# and the command line's start stay free of torch).
from transferlab.models.auto import register_on_import  # noqa: E402

register_on_import()
