"""Parameter-efficient strategies: LoRA (peft), BitFit, prompt tuning; adapters in plans, merged into saved models,
kept alone in peft's format, served several at a time over one base model, and resumed bit for bit."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch
from conftest import tiny_config
from peft import PeftModel
from safetensors.torch import load_file, save_file
from test_extending import toy_config  # registers the toy (non-text) backbone family and task

from transferlab.backbones import open_backbone
from transferlab.config import build_config
from transferlab.deploy.adapters import MultiAdapterPredictor
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.pipeline import load_run_data, prepare_run, save_model, train_run
from transferlab.training.events import Callback


def small(tmp_path, name: str, strategy: dict, **training) -> dict:
    """A config of a run of a few seconds: 32 reviews, 32 tokens, batch 8."""
    return tiny_config(tmp_path, name=name, seed=3, strategy=strategy, doctor={"enabled": False},
                       data={"max_train_examples": 32, "max_eval_examples": 16}, model={"max_length": 32},
                       training={"epochs": 1, "batch_size": 8, "log_every": 1, "precision": "fp32", **training})


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """Two real LoRA trainings (rank 8 and rank 4 on attention + ffn) that kept their adapters."""
    root = tmp_path_factory.mktemp("lora")
    a = build_config(small(root, "a", {"name": "lora", "keep_adapters": True}, epochs=2))
    b = build_config(small(root, "b", {"name": "lora:4", "keep_adapters": True,
                                       "lora": {"target": ["attention", "ffn"], "alpha": 16}}))
    docs = [train_run(cfg, show_progress=False) for cfg in (a, b)]
    return a.run_dir, b.run_dir, docs


def reviews(n: int = 6) -> list[str]:
    return ["A warm, funny film.", "Dull and far too long.", "I loved every minute of it!",
            "The plot makes no sense.", "Great acting, weak script.", "Not worth the ticket."][:n]


def test_a_lora_run_trains_its_adapters_and_saves_an_ordinary_model(lora_runs):
    run, _, (doc, _) = lora_runs
    phase = doc["plan"][0]
    assert set(phase["groups"]) == {f"layer.{i}.attention.adapter" for i in range(6)} | {"head"}
    assert phase["trainable_ratio"] < 0.02
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert not [k for k in weights if "lora_" in k or "base_layer" in k]  # merged: plain parameter names
    base = load_file(str(open_backbone("minilm").model_dir / "model.safetensors"))
    query, ffn = "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight"
    assert not torch.equal(weights["backbone." + query], base[query])  # the adapter's update is in the weights
    assert torch.equal(weights["backbone." + ffn], base[ffn])  # and nothing else of the body moved
    monitor = [json.loads(r) for r in (run / "history.jsonl").read_text().splitlines() if '"monitor"' in r][-1]
    assert monitor["weight_change"]["layer.0.attention.adapter"] > 0
    predictions = Predictor(run).predict(reviews())
    assert {p["label"] for p in predictions} <= {"negative", "positive"}


def test_merged_and_unmerged_logits_agree(tmp_path):
    cfg = build_config(small(tmp_path, "merge", {"name": "lora:4", "lora": {"target": ["attention", "ffn"]}}))
    prep = prepare_run(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking update: lora_B starts at zero, which would make merging trivial
        for name, param in prep.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model = prep.model.eval()
    batch = prep.task.collate(prep.task.encode(prep.data.eval))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        unmerged = model(**inputs).logits
        save_model(prep, tmp_path / "saved")
        merged = model(**inputs).logits
        reloaded = prep.task.load_model(tmp_path / "saved")(**inputs).logits
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert (unmerged - merged).abs().max() < 1e-4
    assert (unmerged - reloaded).abs().max() < 1e-4


def test_kept_adapters_are_peft_format_and_name_their_base(lora_runs):
    run, _, _ = lora_runs
    adapter = run / "adapter"
    note = json.loads((adapter / "transferlab_adapter.json").read_text())
    assert note["base_model"]["name"] == "minilm" and note["base_model"]["checksum"].startswith("sha256:")
    assert (adapter / "adapter_model.safetensors").stat().st_size < 2_000_000  # 296k fp32 parameters
    # peft itself loads them onto a fresh task model over the base weights: same logits as the merged model
    fresh = prepare_run(build_config(small(run.parent, "fresh", {"name": "feature-extraction"}))).model
    peft_model = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    merged = Predictor(run)
    frame = merged.task.inputs_from_args(reviews(), {})
    batch = merged.task.collate(merged.task.encode(frame))
    with torch.no_grad():
        theirs = peft_model(**batch).logits
    assert abs(merged.raw_outputs(frame)["logits"] - theirs.numpy()).max() < 1e-4


def test_several_adapters_are_served_over_one_base_model(lora_runs):
    a, b, _ = lora_runs
    multi = MultiAdapterPredictor("minilm", {"a": a, "b": b})
    texts = reviews()
    for name, run in (("a", a), ("b", b), ("a", a)):  # switching back and forth per batch
        served = multi[name].raw_outputs(multi[name].task.inputs_from_args(texts, {}))["logits"]
        merged = Predictor(run).raw_outputs(Predictor(run).task.inputs_from_args(texts, {}))["logits"]
        assert abs(served - merged).max() < 1e-4, name
    assert multi.predict(texts[:2], model="b")[0]["label"] in ("negative", "positive")
    with pytest.raises(UserError, match="No model named 'c'"):
        multi.predict(texts, model="c")


def test_the_service_routes_each_request_to_the_adapter_it_names(lora_runs):
    from serve_helpers import ServerThread

    from transferlab.deploy.served_model import ModelSpec, ServedModel
    from transferlab.deploy.service import create_app
    from transferlab.deploy.workers import InProcessRunner

    a, b, _ = lora_runs
    served = ServedModel(ModelSpec("minilm", adapters=(("a", str(a)), ("b", str(b)))))
    texts = reviews()[:3]
    with ServerThread(create_app(InProcessRunner(served))) as server:
        for name, run in (("b", b), ("a", a)):
            response = httpx.post(f"{server.url}/predict", json={"text": texts, "model": name}, timeout=120)
            assert response.status_code == 200, response.text
            expected = Predictor(run).predict(texts)
            got = response.json()["predictions"]
            assert [p["label"] for p in got] == [p["label"] for p in expected]
            assert max(abs(g["score"] - e["score"]) for g, e in zip(got, expected, strict=True)) < 1e-4
        assert httpx.post(f"{server.url}/predict", json={"text": "x", "model": "c"}).status_code == 422
        assert httpx.post(f"{server.url}/predict", json={"text": "x"}).status_code == 422  # which model?
        assert set(httpx.get(f"{server.url}/metadata").json()["models"]) == {"a", "b"}


def test_adapters_onto_another_base_model_are_refused(lora_runs, tmp_path, transferlab_cli, capsys):
    run, _, _ = lora_runs
    other = tmp_path / "other-minilm"
    shutil.copytree(open_backbone("minilm").model_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["embeddings.word_embeddings.weight"][0] += 1.0  # other weights, same architecture
    save_file(weights, str(other / "model.safetensors"))
    assert transferlab_cli("predict", run, "nice", "--base", other) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'minilm'" in err and str(other) in err and "other weights" in err
    assert transferlab_cli("predict", run, "nice", "--base", "minilm") == 0


def test_bitfit_trains_only_biases_and_the_head(tmp_path):
    prep = prepare_run(build_config(small(tmp_path, "bitfit", {"name": "bitfit"})))
    (phase,) = prep.phases
    trained = {id(p) for g in phase.lrs for _, p in prep.groups[g].params}
    expected = {id(p) for n, p in prep.model.named_parameters() if n.endswith("bias") or n.startswith("head.")}
    assert trained == expected
    assert phase.trainable_params == sum(p.numel() for p in prep.model.parameters() if id(p) in expected)
    assert phase.trainable_ratio < 0.01  # MiniLM: 25,728 biases + a 148,610-parameter head of 22.7M


def test_prompt_tuning_trains_virtual_tokens_and_saves_them(tmp_path):
    cfg = build_config(small(tmp_path, "prompt", {"name": "prompt-tuning:4"}, epochs=2))
    doc = train_run(cfg, show_progress=False)
    assert set(doc["plan"][0]["groups"]) == {"prompt", "head"}
    monitor = [json.loads(r) for r in (cfg.run_dir / "history.jsonl").read_text().splitlines() if '"monitor"' in r]
    assert monitor[-1]["weight_change"]["prompt"] > 0 and monitor[-1]["weight_change"]["layer.0.attention"] == 0
    saved = json.loads((cfg.run_dir / "model" / "config.json").read_text())
    assert saved["prompt_tokens"] == 4
    assert load_file(str(cfg.run_dir / "model" / "model.safetensors"))["prompt_encoder.embedding.weight"].shape[0] == 4
    predictor = Predictor(cfg.run_dir)  # the saved model has its virtual tokens: it scores as the run did
    assert predictor.evaluate(load_run_data(cfg).eval)["accuracy"] == pytest.approx(doc["eval"]["accuracy"])


def test_lora_works_on_a_non_text_family(tmp_path):
    """The toy family (no Hugging Face, no attention) stands in for image backbones: LoRA on its blocks."""
    cfg = toy_config(tmp_path, "lora")
    cfg["strategy"] |= {"lr": 3e-2, "lora": {"rank": 2, "dropout": 0.0}}  # no attention: the blocks by default
    doc = train_run(build_config(cfg), show_progress=False)
    assert set(doc["plan"][0]["groups"]) == {"block.0.adapter", "block.1.adapter", "block.2.adapter", "head"}
    assert doc["eval"]["accuracy"] >= 0.6
    assert not [k for k in load_file(str(tmp_path / "lora" / "model" / "model.safetensors")) if "lora_" in k]


class StopAt(Callback):
    """Ends a run abruptly after step `step` (after any checkpoint of that step), as a kill would."""

    order = 95

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, record) -> None:
        if trainer.state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_plan_with_adapters_resumes_mid_phase_to_the_same_weights(tmp_path):
    # 4 steps of head only, then 8 of head + adapters; checkpoints at phase and epoch ends (steps 4, 8, 12)
    phases = [{"name": "head", "epochs": 1, "lrs": {"head": 1e-3}},
              {"name": "adapters", "epochs": 2, "lrs": {"layer.3-5.attention.adapter": 1e-3, "head": 5e-4}}]
    strategy = {"phases": phases, "lora": {"rank": 4}}

    def config(name: str):
        return build_config(small(tmp_path, name, strategy, eval_every=3))

    straight = train_run(config("straight"), show_progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed mid phase 2: its adapters' AdamW state must come back
        train_run(config("killed"), show_progress=False, callbacks=(StopAt(10),))
    assert (tmp_path / "killed" / "checkpoints" / "step-00000008").is_dir()
    resumed = train_run(config("killed"), resume=True, show_progress=False)
    a, b = (load_file(str(tmp_path / n / "model" / "model.safetensors")) for n in ("straight", "killed"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    assert resumed["steps"] == straight["steps"] == 12
    assert json.dumps(resumed["eval"], sort_keys=True) == json.dumps(straight["eval"], sort_keys=True)
    histories = [[r for r in map(json.loads, (tmp_path / n / "history.jsonl").read_text().splitlines())
                  if r["kind"] != "cache"] for n in ("straight", "killed")]
    assert histories[0] == histories[1]


def test_plan_shows_adapters_and_where_the_cache_still_applies(tmp_path, transferlab_cli, capsys, monkeypatch):
    from transferlab.commands import run as run_commands

    monkeypatch.setattr(run_commands.console, "width", 250)
    assert transferlab_cli("plan", "--strategy", "lora") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "layer.0-5.attention.adapter @ 1.0e-03, head @ 1.0e-03" in out
    assert "adapters: layer.0-5.attention.adapter 147,456 params (0.64% of 22,861,442)" in out
    assert "296,066 / 22,861,442" in out and "1.30%" in out
    # adapters only in the top two layers: a phase above the adapter-free bottom uses the cache, one with
    # adapters below its first trainable level (the head-only phase) does not
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"strategy": {"lora": {"layers": 2, "rank": 4}, "phases": [
        {"lrs": {"head": 1e-3}}, {"lrs": {"kind:adapter": 5e-4, "head": 1e-3}}]}}))
    assert transferlab_cli("plan", "--config", plan) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "layer.4-5.attention.adapter" in out and "layer.3.attention.adapter" not in out
    assert "phase 1: frozen-feature cache" not in out
    assert "phase 2: frozen-feature cache: hidden states after layer.3" in out


@pytest.mark.parametrize("args, expected", [
    (["--strategy", "lora:0"], "the LoRA rank must be a whole number of at least 1"),
    (["--strategy", "lora:500"], "LoRA rank 500 is larger than the hidden size (384)"),
    (["--strategy", "lora", "--set", "strategy.lora.target=[cross-attention]"],
     "kind 'cross-attention', but this model has no layer group of that kind"),
    (["--strategy", "lora", "--set", "strategy.lora.target=[head]"], "not a kind of layer LoRA adapts"),
    (["--strategy", "prompt-tuning", "--model", "toy-stack", "--set", "task=toy"], "is a vectors backbone"),
    (["--strategy", "bitfit", "--set", "strategy.keep_adapters=true"], "adds no adapters to keep"),
])
def test_bad_adapter_input_is_one_paragraph_and_exit_2(transferlab_cli, capsys, args, expected):
    assert transferlab_cli("plan", *args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert expected in " ".join(captured.err.split())


def test_keep_adapters_refuses_a_plan_that_trains_more_than_adapters(tmp_path, transferlab_cli, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"strategy": {"lora": {}, "keep_adapters": True, "phases": [
        {"lrs": {"kind:adapter": 5e-4, "layer.5.ffn": 1e-4, "head": 1e-3}}]}}))
    assert transferlab_cli("plan", "--config", plan) == 2
    assert "also trains 'layer.5.ffn'" in " ".join(capsys.readouterr().err.split())
