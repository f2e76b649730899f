"""Where one training step's time goes: the bare peft loop (no Trainer) on one fixed batch, piece by piece.

    python bench/step_profile.py                  # on CUDA when present, else the CPU
    python bench/step_profile.py --batch-size 128
    python bench/step_profile.py --iters 3        # on the 2-core CPU a step takes seconds

roberta-base's real config with random weights, LoRA value-only r=22 with the full head (the seed's spec, as in
bench/throughput.py), one batch of --batch-size rows x --length tokens (half the rows end in 7 padding tokens),
bf16 autocast where lorafit would use it with the frozen Linear weights stored in bf16 as lorafit stores them,
attention off cuDNN as lorafit runs it. Prints milliseconds per call for:
a forward pass, forward + backward, and a full step (+ gradient clipping + AdamW, foreach and fused), then a
torch.profiler table of 10 full steps and one JSON line with the figures, the device time the kernels took per step
and (on CUDA) the kernel launches per step. Compare `full step` with bench/throughput.py's
`lorafit_train_seconds_per_step` to see what the Trainer adds; compare the kernels' time with the step's wall time
to see whether the step is bound by the device or by launching work onto it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from throughput import LORA, SHARED, device, synchronize  # noqa: E402  (the same spec and helpers)

LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(SHARED / "models/roberta-base-tokenizer"),
                        help="folder with the model's config.json (weights are not needed)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch (default 32, lorafit's)")
    parser.add_argument("--length", type=int, default=59, help="tokens per row (default 59, lorafit's mean "
                                                              "padded length on AG News)")
    parser.add_argument("--iters", type=int, default=40, help="timed calls of each piece (default 40)")
    parser.add_argument("--fp32-frozen-weights", action="store_true",
                        help="keep the frozen weights fp32 (autocast casts them at every step), as before lorafit "
                             "stored them in bf16: for the kernel count with and without")
    return parser.parse_args(argv)


def build(model_dir: str, batch_size: int, length: int):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lorafit.config import LoraSpec
    from lorafit.model import wrap_with_lora

    config = AutoConfig.from_pretrained(model_dir, num_labels=4)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config)
    model = wrap_with_lora(base, LoraSpec(**LORA), LORA["r"], "full").to(device())
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, config.vocab_size - 1, (batch_size, length), generator=generator),
             "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "labels": torch.randint(0, 4, (batch_size,), generator=generator)}
    batch["attention_mask"][: batch_size // 2, length - 7:] = 0
    return model, {k: v.to(device()) for k, v in batch.items()}


def main(argv=None) -> dict:
    from lorafit.model import attention_without_cudnn, frozen_linear_weights_to_bf16, use_bf16

    args = parse_args(argv)
    model, batch = build(args.model_dir, args.batch_size, args.length)
    params = [p for p in model.parameters() if p.requires_grad]
    bf16 = use_bf16("auto")
    # as `lorafit train` stores them under bf16 autocast (--fp32-frozen-weights: as it did before, cast every step)
    stored_bf16 = frozen_linear_weights_to_bf16(model) if bf16 and not args.fp32_frozen_weights else 0
    out = {"device": str(device()), "batch_size": args.batch_size, "length": args.length, "bf16": bf16,
           "trainable_tensors": len(params), "frozen_tensors_stored_bf16": stored_bf16}

    def autocast():
        return torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=bf16)

    def forward():
        with torch.no_grad(), autocast():
            model(**batch)

    def forward_backward():
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    def full_step(optimizer):
        def step():
            with autocast():
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    def timed(name: str, fn) -> None:
        for _ in range(min(5, args.iters)):
            fn()
        synchronize()
        started = time.perf_counter()
        for _ in range(args.iters):
            fn()
        synchronize()
        out[f"{name}_ms"] = round((time.perf_counter() - started) / args.iters * 1000, 2)
        print(f"{name}: {out[f'{name}_ms']} ms", flush=True)

    cuda = device().type == "cuda"
    with attention_without_cudnn():
        model.train()
        timed("forward_train_mode_no_grad", forward)
        timed("forward_backward", forward_backward)
        timed("full_step_adamw_foreach", full_step(torch.optim.AdamW(params, lr=1e-5, foreach=True)))
        if cuda:  # fused AdamW is a CUDA kernel
            timed("full_step_adamw_fused", full_step(torch.optim.AdamW(params, lr=1e-5, fused=True)))
        model.eval()
        timed("forward_eval_mode", forward)
        model.train()

        from torch.profiler import ProfilerActivity, profile

        step = full_step(torch.optim.AdamW(params, lr=1e-5, foreach=True))
        steps = 10
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(steps):
                step()
            synchronize()
    events = prof.key_averages()
    if cuda:
        # kernel events only: an aten op's self device time repeats its kernels' (the profiler table's total)
        kernels = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU]
        out["kernel_ms_per_step"] = round(sum(e.self_device_time_total for e in kernels) / steps / 1000, 2)
        out["kernel_launches_per_step"] = sum(e.count for e in events if e.key in LAUNCH_EVENTS) / steps
    print(events.table(sort_by="self_cpu_time_total", row_limit=18))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
