"""transferlab: turn a pretrained transformer into a task model by transfer learning, and ship it."""

import os

# Never reach a model hub: every model and dataset comes from a local directory or an installed package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
