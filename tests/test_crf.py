"""The CRF of the token-classification head: exact against brute force, BIO constraints, learning, save/reload."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertConfig

from transferlab.models.modeling_transferlab import (
    CRF,
    TransferlabConfig,
    TransferlabForTokenClassification,
    bio_moves,
    left_align,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_crf(labels=LABELS, seed=0) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(labels)
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    return crf


def path_score(crf: CRF, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    trans, start, end = crf.potentials()
    score = start[path[0]] + emissions[0, path[0]] + end[path[-1]]
    for t in range(1, len(path)):
        score = score + trans[path[t - 1], path[t]] + emissions[t, path[t]]
    return score


def test_likelihood_and_viterbi_match_brute_force_for_every_length():
    crf = random_crf()
    lengths = [4, 3, 1]
    emissions = torch.randn(len(lengths), 4, len(LABELS))
    mask = torch.tensor([[t < n for t in range(4)] for n in lengths])
    decoded = crf.decode(emissions, mask)
    for row, n in enumerate(lengths):
        paths = list(itertools.product(range(len(LABELS)), repeat=n))
        scores = torch.stack([path_score(crf, emissions[row], p) for p in paths]).detach()
        best = paths[int(scores.argmax())]
        assert decoded[row, :n].tolist() == list(best)
        assert (decoded[row, n:] == -100).all()
        tags = torch.zeros(1, 4, dtype=torch.long)
        tags[0, :n] = torch.tensor(best)
        expected = scores.max() - torch.logsumexp(scores, 0)
        assert crf.log_likelihood(emissions[row:row + 1], tags, mask[row:row + 1]).item() == pytest.approx(
            expected.item(), abs=1e-4)


def test_bio_moves_forbid_entering_or_switching_inside_an_entity():
    moves, starts = bio_moves(LABELS)
    allowed = {(a, b) for i, a in enumerate(LABELS) for j, b in enumerate(LABELS) if moves[i, j]}
    assert ("O", "I-PER") not in allowed and ("B-LOC", "I-PER") not in allowed and ("I-LOC", "I-PER") not in allowed
    assert {("B-PER", "I-PER"), ("I-PER", "I-PER"), ("I-PER", "B-LOC"), ("O", "B-PER"), ("I-LOC", "O")} <= allowed
    assert [label for label, ok in zip(LABELS, starts.tolist(), strict=True) if not ok] == ["I-PER", "I-LOC"]


def test_viterbi_never_decodes_an_invalid_bio_sequence():
    """Emissions that shout I- tags (the argmax is invalid BIO everywhere) still decode to valid sequences."""
    crf = CRF(LABELS)
    emissions = torch.zeros(64, 6, len(LABELS))
    emissions[..., 2] = 5.0  # I-PER everywhere
    emissions[torch.arange(64), torch.randint(0, 6, (64,)), 4] = 9.0  # an I-LOC somewhere
    mask = torch.ones(64, 6, dtype=torch.bool)
    moves, starts = bio_moves(LABELS)
    for path in crf.decode(emissions, mask).tolist():
        assert starts[path[0]]
        assert all(moves[a, b] for a, b in itertools.pairwise(path))
    assert all(LABELS[i].startswith("I-") for i in emissions.argmax(-1).flatten().tolist())  # argmax: invalid BIO


def test_agrees_with_pytorch_crf_without_constraints():
    torchcrf = pytest.importorskip("torchcrf")
    labels = ["A", "B", "C", "D"]  # no I- tags: nothing is forbidden
    ours = random_crf(labels, seed=3)
    ref = torchcrf.CRF(len(labels), batch_first=True)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items()})
    emissions = torch.randn(3, 5, len(labels))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    tags = torch.randint(0, len(labels), (3, 5))
    expected = ref(emissions, tags, mask, reduction="none")
    assert torch.allclose(ours.log_likelihood(emissions, tags, mask), expected, atol=1e-4)
    for row, best in enumerate(ref.decode(emissions, mask)):
        assert ours.decode(emissions, mask)[row, :len(best)].tolist() == best


def test_training_the_transitions_raises_the_likelihood_of_the_data():
    crf = CRF(LABELS)
    emissions = torch.zeros(8, 5, len(LABELS))  # uninformative: only the transitions can learn the pattern
    tags = torch.tensor([[1, 2, 0, 3, 4]] * 8)
    mask = torch.ones(8, 5, dtype=torch.bool)
    optimizer = torch.optim.Adam(crf.parameters(), lr=0.1)
    before = crf.log_likelihood(emissions, tags, mask).mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        (-crf.log_likelihood(emissions, tags, mask).mean()).backward()
        optimizer.step()
    assert crf.log_likelihood(emissions, tags, mask).mean().item() > before + 2
    assert crf.decode(emissions, mask)[0].tolist() == [1, 2, 0, 3, 4]


def test_left_align_moves_tagged_positions_first_in_order():
    values = torch.arange(12.0).view(2, 6, 1)
    tagged = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    aligned, positions, mask = left_align(values, tagged)
    assert positions[0].tolist() == [1, 3, 4] and positions[1, 0].item() == 2
    assert aligned[0, :, 0].tolist() == [1.0, 3.0, 4.0] and aligned[1, 0, 0].item() == 8.0
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def tiny_tagger(crf: bool) -> TransferlabForTokenClassification:
    backbone = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=32)
    config = TransferlabConfig(backbone=backbone.to_dict(), task="tokens", num_labels=len(LABELS),
                               id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                               crf=crf)
    torch.manual_seed(0)
    return TransferlabForTokenClassification(config)


@pytest.mark.parametrize("crf", [True, False])
def test_token_model_tags_only_marked_positions_and_reloads_through_auto_class(tmp_path, crf):
    model = tiny_tagger(crf).eval()
    assert (model.crf is not None) == crf
    if crf:
        assert all(p.abs().sum() == 0 for p in model.crf.parameters())  # a fresh CRF starts neutral
    ids = torch.randint(1, 50, (3, 7))
    tag_mask = torch.tensor([[0, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    labels = torch.where(tag_mask.bool(), torch.tensor([1, 2, 0, 3, 4, 0, 0]), -100)
    out = model(input_ids=ids, tag_mask=tag_mask, labels=labels)
    assert torch.isfinite(out.loss)
    assert ((out.predictions != -100) == tag_mask.bool()).all()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    again = loaded(input_ids=ids, tag_mask=tag_mask)
    assert torch.equal(again.predictions, out.predictions)
    assert torch.allclose(again.logits, out.logits, atol=1e-6)
