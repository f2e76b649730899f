"""The GPU speed paths, checked on the CPU: what the `auto` settings resolve to on each device (CUDA faked by
patching lorafit.device.on_cuda), frozen Linear weights stored in bf16 under bf16 autocast (same logits and
gradients, fp32 adapter file, `lorafit predict` unchanged), padding to a multiple of some tokens, and the
Trainer's arguments: torch.compile, fused AdamW (LoRA+ too).

torch.compile itself is not run here: on the 2-core development CPU inductor took 282 s to compile the 2-layer,
32-wide RoBERTa's first batch shape and 251 s more for the second, so only its switch and wiring are tested.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import write_config
from lorafit import device
from lorafit.config import LoraSpec, TrainConfig, config_from_dict, load_config
from lorafit.model import frozen_linear_weights_to_bf16, load_pretrained_model, load_model_config, wrap_with_lora


@pytest.fixture
def on_cuda(monkeypatch):
    """What lorafit.device decides on a CUDA machine (nothing is moved to a GPU)."""
    monkeypatch.setattr(device, "on_cuda", lambda: True)


# --- what auto means on each device ------------------------------------------------------------------------------

def test_cpu_defaults_keep_the_cpu_recipe():
    """On the CPU `auto` is what the defaults were before it existed: every CPU result stays valid."""
    train = device.resolve_train_batch(TrainConfig())
    assert (train.batch_size, train.learning_rate) == (32, 5e-4)
    assert device.predict_batch_size("auto") == 64
    assert device.pad_multiple("auto") == 1
    assert device.compile_model("auto") is False


def test_cuda_defaults(on_cuda):
    train = device.resolve_train_batch(TrainConfig(learning_rate=1e-3))
    assert train.batch_size == 128
    assert train.learning_rate == pytest.approx(2e-3)  # sqrt(128 / 32) = 2
    assert device.predict_batch_size("auto") == 512
    assert device.compile_model("auto") is True


def test_explicit_settings_win_on_either_device(on_cuda):
    train = device.resolve_train_batch(TrainConfig(batch_size=16, learning_rate=1e-3))
    assert (train.batch_size, train.learning_rate) == (16, 1e-3)  # an explicit batch keeps the rate as written
    assert device.predict_batch_size(96) == 96 and device.pad_multiple(8) == 8
    for setting, expected in (("on", True), (True, True), ("off", False), (False, False)):
        assert device.compile_model(setting) is expected


def test_square_root_rule():
    assert device.scaled_learning_rate(1e-3, 128, 16) == pytest.approx(1e-3 * math.sqrt(8))
    assert device.scaled_learning_rate(5e-4, 32) == 5e-4


@pytest.mark.parametrize("values, message", [
    ({"batch_size": "big"}, "expected a whole number or 'auto'"),
    ({"eval_batch_size": 0}, "must be positive"),
    ({"pad_to_multiple_of": "x"}, "expected a whole number or 'auto'"),
    ({"compile": "maybe"}, "train.compile is 'maybe'"),
])
def test_bad_settings_are_refused(values, message):
    from lorafit.errors import UserError

    with pytest.raises(UserError, match=message):
        config_from_dict({"train": values})


def test_yaml_on_off_reach_compile(tmp_path):
    """YAML 1.1 reads `on` / `off` as booleans; both spellings must mean the same."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  compile: on\n")
    assert device.compile_model(load_config(path).train.compile) is True
    assert device.compile_model(load_config(path, {"train.compile": "off"}).train.compile) is False


def test_prepare_records_the_resolved_batch_and_rate(tiny_roberta, small_agnews, tmp_path, on_cuda):
    """prepare turns batch_size auto into the device's batch and scales the rate; the run folder records both."""
    from lorafit.train import prepare

    cfg = config_from_dict({"output_dir": str(tmp_path), "model": {"name_or_path": str(tiny_roberta)},
                            "lora": {"r": 4, "alpha": 8}, "data": {"train_file": str(small_agnews)},
                            "train": {"learning_rate": 1e-3}})
    saved = yaml.safe_load(prepare(cfg).cfg.to_yaml())["train"]
    assert (saved["batch_size"], saved["learning_rate"]) == (128, pytest.approx(2e-3))


# --- the Trainer's arguments ------------------------------------------------------------------------------------

@pytest.fixture
def prepared(tiny_config):
    from lorafit.train import prepare

    return prepare(load_config(tiny_config, {"train.pad_to_multiple_of": 8}))


def _trainer(prepared, tmp_path, **lora):
    import dataclasses

    from lorafit.train import GracefulInterrupt, build_trainer

    cfg = prepared.cfg
    prepared = dataclasses.replace(prepared, cfg=dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, **lora)))
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)), cfg.lora, 4, "full")
    return build_trainer(prepared, model, tmp_path, GracefulInterrupt())


def test_trainer_arguments_by_device(prepared, tmp_path, monkeypatch):
    from lorafit.train import training_arguments

    args = training_arguments(prepared.cfg, tmp_path)
    assert (args.torch_compile, args.per_device_eval_batch_size, args.optim) == (False, 64, "adamw_torch_fused")
    monkeypatch.setattr(device, "on_cuda", lambda: True)
    args = training_arguments(prepared.cfg, tmp_path)
    assert (args.torch_compile, args.per_device_eval_batch_size) == (True, 512)
    assert args.per_device_train_batch_size == 8  # tiny_config's explicit batch


@pytest.mark.parametrize("loraplus", [None, 16.0])
def test_fused_adamw_with_and_without_loraplus(prepared, tmp_path, loraplus):
    trainer = _trainer(prepared, tmp_path, loraplus_lr_ratio=loraplus)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    fastest = max(group["lr"] for group in optimizer.param_groups)
    assert fastest == pytest.approx(prepared.cfg.train.learning_rate * (loraplus or 1))  # LoRA+'s B matrices


def test_training_batches_pad_to_the_multiple(prepared, tmp_path):
    trainer = _trainer(prepared, tmp_path)
    rows = [prepared.train_ds[i] for i in range(9)]
    batch = trainer.data_collator([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
    longest = max(r["length"] for r in rows)
    assert batch["input_ids"].shape[1] == math.ceil(longest / 8) * 8
    assert int(batch["attention_mask"].sum()) == sum(r["length"] for r in rows)


def test_prediction_pads_to_the_multiple_with_the_same_results(tiny_roberta, small_agnews):
    from lorafit.model import load_tokenizer
    from lorafit.predict import predict_probabilities

    tokenizer = load_tokenizer(str(tiny_roberta))
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_roberta)}})
    model = load_pretrained_model(cfg.model, load_model_config(cfg.model)).eval()
    texts = pd.read_csv(small_agnews)["text"].tolist()[:50]
    widths = []
    model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    plain = predict_probabilities(model, tokenizer, texts, 128, 16, bf16=False)
    assert any(w % 8 for w in widths)  # else the test proves nothing
    widths.clear()
    padded = predict_probabilities(model, tokenizer, texts, 128, 16, bf16=False, pad_to_multiple_of=8)
    assert widths and all(w % 8 == 0 for w in widths)
    np.testing.assert_allclose(padded, plain, atol=1e-5)


# --- frozen weights in bf16 --------------------------------------------------------------------------------------

def _lora_model(tiny_roberta, head: str):
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_roberta), "head": head}})
    torch.manual_seed(0)
    model = wrap_with_lora(load_pretrained_model(cfg.model, load_model_config(cfg.model)),
                           LoraSpec(r=4, alpha=8, target_modules=["query", "value", "intermediate.dense"]), 4, head)
    with torch.no_grad():  # LoRA's B starts at zero; a non-zero update makes the adapters count in the comparison
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def _logits_and_grads(model, batch):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), grads


@pytest.mark.parametrize("head", ["full", "linear", "lora"])
def test_bf16_storage_changes_no_number(tiny_roberta, small_agnews, head):
    """The bf16 copy is exactly what autocast casts each fp32 weight to: logits and every gradient are identical,
    and what trains or is saved (LoRA, the head, head 'lora''s saved frozen dense copy) stays fp32."""
    from lorafit.model import load_tokenizer

    model = _lora_model(tiny_roberta, head)
    model.train(False)  # no dropout: the two passes must see the same network
    stored = copy.deepcopy(model)
    assert frozen_linear_weights_to_bf16(stored) > 0
    tokenizer = load_tokenizer(str(tiny_roberta))
    texts = pd.read_csv(small_agnews)["text"].tolist()[:12]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"), labels=torch.arange(12) % 4)

    logits, grads = _logits_and_grads(model, batch)
    stored_logits, stored_grads = _logits_and_grads(stored, batch)
    assert torch.equal(stored_logits, logits)
    assert grads.keys() == stored_grads.keys()
    assert all(torch.equal(stored_grads[n], grads[n]) for n in grads)

    for name, param in stored.named_parameters():
        keeps_fp32 = param.requires_grad or "modules_to_save" in name or "original_module" in name
        module = stored.get_submodule(name.rpartition(".")[0])
        if keeps_fp32 or not isinstance(module, torch.nn.Linear):  # embeddings and LayerNorms too
            assert param.dtype == torch.float32, name
        else:
            assert param.dtype == torch.bfloat16, name


@pytest.fixture(scope="module")
def bf16_and_fp32_runs(tmp_path_factory, tiny_roberta, small_agnews):
    """The same tiny run trained with precision bf16 (forced: this CPU has no fast bf16) and fp32; the dtypes of the
    bf16 run's parameters as the Trainer starts."""
    from transformers import TrainerCallback

    from lorafit.train import run_training

    root = tmp_path_factory.mktemp("bf16-runs")
    seen = {}

    class Dtypes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update({n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()})

    results = {}
    for precision in ("bf16", "fp32"):
        config = write_config(
            root / f"{precision}.yaml", name=precision, output_dir=str(root / "runs"),
            model={"name_or_path": str(tiny_roberta)}, lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
            data={"train_file": str(small_agnews)},
            train={"max_steps": 4, "batch_size": 8, "eval_steps": 2, "learning_rate": 1e-3, "precision": precision},
        )
        callbacks = [Dtypes()] if precision == "bf16" else []
        results[precision] = run_training(load_config(config), extra_callbacks=callbacks)
    return root / "runs", results, seen


def test_bf16_run_trains_frozen_bf16_and_saves_fp32(bf16_and_fp32_runs):
    runs_dir, results, seen = bf16_and_fp32_runs
    assert results["bf16"]["status"] == "completed" and math.isfinite(results["bf16"]["final_eval_loss"])
    assert {dtype for dtype, trains in seen.values() if trains} == {torch.float32}
    frozen = {n for n, (dtype, trains) in seen.items() if dtype == torch.bfloat16}
    assert frozen and all(not seen[n][1] for n in frozen)
    assert any(".query.base_layer.weight" in n for n in frozen)

    def tensors(run):
        with safe_open(str(runs_dir / run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k).dtype for k in f.keys()}

    # the adapter file is the fp32 run's, name for name and dtype for dtype
    assert tensors("bf16") == tensors("fp32") and set(tensors("bf16").values()) == {torch.float32}


def test_bf16_run_predicts_like_its_fp32_weights(bf16_and_fp32_runs, small_agnews, tmp_path, cli):
    """`lorafit predict` on a bf16 run: same CSV format; the bf16-stored merged model gives the probabilities the
    fp32-merged model gives under the same autocast."""
    from lorafit.model import load_adapter_for_inference
    from lorafit.predict import load_run, predict_probabilities

    runs_dir, _, _ = bf16_and_fp32_runs
    out = tmp_path / "pred.csv"
    result = cli("predict", runs_dir / "bf16", "--input", small_agnews, "--output", out, "--probabilities")
    assert result.code == 0, result.err
    table = pd.read_csv(out)
    assert list(table.columns[:2]) == ["ID", "Label"] and len(table) == len(pd.read_csv(small_agnews))

    loaded = load_run(runs_dir / "bf16")
    assert loaded.bf16 and loaded.model.classifier.out_proj.weight.dtype == torch.bfloat16
    reference = load_adapter_for_inference(runs_dir / "bf16" / "adapter", loaded.cfg.model, loaded.label_names,
                                           loaded.cfg.train.seed)
    texts = pd.read_csv(small_agnews)["text"].tolist()[:64]
    mine = predict_probabilities(loaded.model, loaded.tokenizer, texts, 128, 16, bf16=True)
    theirs = predict_probabilities(reference, loaded.tokenizer, texts, 128, 16, bf16=True)
    np.testing.assert_array_equal(mine, theirs)
