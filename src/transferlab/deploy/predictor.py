"""One Predictor over a saved run's model: batches texts, returns labels with probabilities."""

from __future__ import annotations

from pathlib import Path

import torch

from transferlab.errors import UserError
from transferlab.models.backbone import load_tokenizer
from transferlab.models.modeling_transferlab import TransferlabForSequenceClassification


def model_dir_of(path: str | Path) -> Path:
    """Accept a run directory (with model/) or a model directory."""
    path = Path(path)
    candidate = path / "model" if (path / "model" / "config.json").is_file() else path
    if not (candidate / "config.json").is_file():
        raise UserError(f"'{path}' is neither a run directory (with model/) nor a saved model directory.",
                        "Pass the directory printed at the end of `transferlab train` or `transferlab demo`.")
    return candidate


class Predictor:
    """Batched inference with the PyTorch backend."""

    def __init__(self, path: str | Path, batch_size: int = 64, max_length: int = 256):
        self.model_dir = model_dir_of(path)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = TransferlabForSequenceClassification.from_pretrained(str(self.model_dir)).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> list[dict]:
        """Label, probability of that label, and every label's probability, for each text."""
        results = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            batch = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt")
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1)
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                results.append({"label": self.labels[best], "score": row[best],
                                "probabilities": dict(zip(self.labels, row, strict=True))})
        return results
