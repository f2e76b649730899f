"""How long lorafit's tokenizing takes against datasets' default, which names the result by dill-hashing the
tokenizer: the same rows, alternated in one run (these machines are noisy: read the ratio, not the seconds).

    python bench/tokenize_fingerprint.py [--rows 600] [--repeats 5] [--tokenizer DIR]

Defaults: roberta-base's real tokenizer and real AG News rows from tests/fixtures (no download). The tokenizer is
saved and reloaded first, so that it loads from tokenizer.json as Hub models' tokenizers do (one built from
vocab.json and merges.txt, as the fixture is, hashes about as fast as it tokenizes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import pandas as pd
from transformers import AutoTokenizer

from lorafit.data import tokenize

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def tokenize_with_hashed_fingerprint(texts: list[str], tokenizer, max_length: int):
    """What lorafit did before: the same map, letting datasets fingerprint the function (tokenizer included)."""
    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return datasets.Dataset.from_dict({"text": texts}).map(encode, batched=True, batch_size=1000,
                                                             remove_columns=["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokenizer", default=str(FIXTURES / "roberta-base"))
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as folder:
        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = pd.read_csv(FIXTURES / "agnews" / "train_sample.csv")["text"].head(args.rows).tolist()
    seconds = {"lorafit": [], "hashed fingerprint": []}
    for _ in range(args.repeats):
        for name, run in (("lorafit", tokenize), ("hashed fingerprint", tokenize_with_hashed_fingerprint)):
            start = time.perf_counter()
            result = run(texts, tokenizer, 128)
            seconds[name].append(time.perf_counter() - start)
            assert len(result) == len(texts)
    for name, values in seconds.items():
        print(f"{name:>20}: median {statistics.median(values):.3f} s over {len(values)} runs of {len(texts)} rows")
    ratio = statistics.median(seconds["hashed fingerprint"]) / statistics.median(seconds["lorafit"])
    print(f"hashed fingerprint / lorafit: {ratio:.1f}x")


if __name__ == "__main__":
    main()
