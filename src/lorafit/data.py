"""Data stage: read labelled or unlabelled tables (local files or the Hub), check them, carve validation, tokenize.

Every check happens before a run folder exists, so a bad file leaves nothing behind. Rows are never dropped
silently: a problem row stops the run with its row number.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
import numbers
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from lorafit.config import DataConfig
from lorafit.errors import HubUnreachableError, UserError, first_bad_utf8

log = logging.getLogger(__name__)

TABLE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
PICKLE_EXTENSIONS = (".pkl", ".pickle")
FIRST_ROWS_SHOWN = 5
CLASS_NAMES = "lorafit_class_names"  # frame.attrs key: {column: class names} of a pickled Dataset's ClassLabels


@dataclass
class LabelledData:
    texts: list[str]
    labels: np.ndarray  # int64 class ids
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels.tolist()):
            digest.update(f"{label}\t{text}\n".encode("utf-8"))
        return digest.hexdigest()[:16]

    def subset(self, indices) -> "LabelledData":
        indices = list(indices)
        return LabelledData([self.texts[i] for i in indices], self.labels[indices], self.label_names, self.source)


def _rows(positions) -> str:
    positions = list(positions)
    shown = ", ".join(str(p) for p in positions[:FIRST_ROWS_SHOWN])
    more = f" and {len(positions) - FIRST_ROWS_SHOWN} more" if len(positions) > FIRST_ROWS_SHOWN else ""
    return f"{shown}{more}"


def _read_json(path: Path, lines: bool) -> pd.DataFrame:
    """A JSON (lines) file's columns as written. Nullable dtypes: with numpy's, a column of whole numbers with a null
    became float, so the text 123 read "123.0" and a large id lost digits. utf-8-sig: Windows editors start UTF-8
    files with a BOM, which JSON rejects."""
    return pd.read_json(path, lines=lines, dtype=False, dtype_backend="numpy_nullable", encoding="utf-8-sig")


def _read_parquet(source) -> pd.DataFrame:
    """A parquet file's columns with nullable dtypes, as JSON's: with numpy's, a whole-number column with a null in a
    file written without pandas metadata (pyarrow, polars, Spark) became float, so the text 2024 read "2024.0"."""
    return pd.read_parquet(source, dtype_backend="numpy_nullable")


def _dataset_frame(dataset) -> pd.DataFrame:
    """A datasets.Dataset's rows, in its order (a select or shuffle included), read as a parquet file is: its own
    to_pandas() has numpy dtypes, the same float for a whole-number column with a gap."""
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(dataset.with_format("arrow")[:], buffer)  # [:] applies the rows' order
    return _read_parquet(buffer)


def read_table(path: str | Path, trust_pickle: bool = False) -> pd.DataFrame:
    """A local file as a DataFrame of its columns; text stays text (no NA guessing on CSV/TSV)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}; check the path (relative paths start from {Path.cwd()})")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a data file ({', '.join(TABLE_EXTENSIONS)})")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            frame = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".jsonl":
            frame = _read_json(path, lines=True)
        elif suffix == ".json":
            try:
                frame = _read_json(path, lines=False)
            except ValueError:
                frame = _read_json(path, lines=True)
        elif suffix == ".parquet":
            frame = _read_parquet(path)
        elif suffix in PICKLE_EXTENSIONS:
            frame = _read_pickle(path, trust_pickle)
        else:
            raise UserError(
                f"unknown file type '{suffix or path.name}' for {path}; use one of {', '.join(TABLE_EXTENSIONS)}"
            )
    except UserError:
        raise
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text ({first_bad_utf8(path)}); re-save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; it needs a header row and at least one data row") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path} is not a well-formed table: {str(exc).strip().splitlines()[-1]}; fix the ragged rows") from None
    except TypeError as exc:
        # pandas' JSON readers raise TypeError for an item that is no object (`null`, `42`, `[1, 2]` as a line of a
        # .jsonl or an element of a .json array): it was a traceback, not a line naming the file
        if suffix not in (".json", ".jsonl"):
            raise
        item = "line" if suffix == ".jsonl" else "record (array element or line)"
        raise UserError(f"cannot read {path}: a {item} is not a JSON object ({exc}); make every {item} one "
                        'object of column values, e.g. {"text": "...", "label": 0}, with no null, number or list '
                        "in their place") from None
    except (ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fix = {".json": "make it a JSON array of records, or one JSON object per line",
               ".jsonl": "make each line one valid JSON object",
               ".parquet": "re-write it with pandas' to_parquet"}.get(suffix, "check that it is a well-formed table")
        raise UserError(f"cannot read {path}: {detail}; {fix}") from None
    if len(frame) == 0:
        raise UserError(f"{path} has no data rows (only a header, or nothing); add rows")
    named = [n for n in frame.index.names if n is not None and n not in frame.columns]
    if named:  # parquet and pickles keep a DataFrame's named index (df.set_index("id")) out of its columns
        frame = frame.reset_index(level=named)
    # frame[name] would be a table, not a column (a pickled DataFrame can hold such names)
    _refuse_repeated_names(path, {str(c) for c in frame.columns[frame.columns.duplicated()]})
    return frame


def _refuse_repeated_names(path: Path, repeated: set) -> None:
    if repeated:
        raise UserError(f"{path} has several columns named {', '.join(map(repr, sorted(repeated)))}; rename them apart")


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    """A CSV/TSV with every record kept, empty lines aside. pandas' skip_blank_lines also skips a line of spaces, which
    is a text (pandas writes a one-column frame's "  " so): `lorafit predict` lost that row and numbered every later
    row one too low. Python's csv module tells an empty line from such a text and from a quoted empty one ("")."""
    read = functools.partial(_read_csv, path, sep)
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # csv's default 128 KiB per field refuses texts pandas reads
    try:
        records, header_names = _scan_records(path, sep)  # records: True for an empty line
    except csv.Error:  # the two parsers disagree on this file: pandas' own reading
        return read()
    finally:
        csv.field_size_limit(limit)
    # pandas renames a repeated name (text, text.1), and the first was used without a word. Empty names (trailing
    # commas) are left to pandas, which names them apart (Unnamed: 2), and nobody selects them.
    _refuse_repeated_names(path, {n for i, n in enumerate(header_names) if n and n in header_names[:i]})
    # Empty lines before the header are skipped too: else pandas took the first one for a header of no columns
    header = next((i for i, empty in enumerate(records) if not empty), 0)
    frame, records = read(skip_blank_lines=False, skiprows=header), records[header + 1:]
    if len(records) != len(frame):
        return read()
    return frame[~np.array(records, dtype=bool)].reset_index(drop=True)


def _scan_records(path: Path, sep: str) -> tuple[list[bool], list[str]]:
    """Whether each record is an empty line, and the header's names (the first other record). utf-8-sig: a BOM is no
    part of the first line (a BOM and then an empty line read as a header of no columns). strict: text after a
    closing quote ("Title" and more, or a text that opens a quote it never closes) is refused: pandas dropped those
    quotes, or read every line up to the next quote, tabs and line ends included, as that one text, so the rows in
    between were lost without a word."""
    records, header = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=sep, strict=True)
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return records, header
            except csv.Error as exc:
                if "expected after" not in str(exc):
                    raise
                writer = "to_csv(sep='\\t')" if sep == "\t" else "to_csv"
                raise UserError(f"{path}: the record at line {line} has text after a closing quote, so its quotes "
                                "would be dropped or the rows up to the next quote read as one text; quote that "
                                f"whole text and double the quotes in it (\"\"\"Title\"\" and more\"), as pandas' "
                                f"{writer} writes it") from None
            header = header or record
            records.append(not record)


def _read_csv(path: Path, sep: str, **options) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8", on_bad_lines="error",
                        **options)
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas reads a first data row with more fields than the header as row labels plus columns: "Hello, world"
        # under the header `text` became the text " world", and every row was shifted so, without a word
        extra = frame.index.nlevels
        fix = "quote each text that holds a tab" if sep == "\t" else 'quote each text that holds a comma ("Hello, world")'
        raise UserError(f"{path}: its first data row has {extra} more field{'s' * (extra > 1)} than the header "
                        f"({', '.join(map(str, frame.columns))}), which would cut every row's first fields off; "
                        f"{fix}, or name every column in the header")
    return frame


def _read_pickle(path: Path, trust_pickle: bool) -> pd.DataFrame:
    if not trust_pickle:
        raise UserError(
            f"{path} is a pickle, and loading a pickle runs any code inside it; pass --trust-pickle if you trust "
            "its source, or convert it once: python -c \"import pandas as pd; "
            f"pd.read_pickle('{path.name}').to_parquet('{path.stem}.parquet')\""
        )
    import pickle

    with open(path, "rb") as handle:
        try:
            obj = pickle.load(handle)  # noqa: S301 - the user vouched for this file with --trust-pickle
        except Exception as exc:  # a broken pickle can raise almost anything
            raise UserError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, dict) and obj and all(hasattr(v, "to_pandas") for v in obj.values()):  # a datasets.DatasetDict
        raise UserError(f"{path} holds several splits ({', '.join(map(str, obj))}); pickle one of them, "
                        f"e.g. pickle.dump(dataset[{next(iter(obj))!r}], handle)")
    if hasattr(obj, "to_pandas"):  # datasets.Dataset, the competition's format
        # a datasets.Dataset (unpickling it imported datasets); else an IterableDataset or a polars frame, say
        arrow_dataset = getattr(sys.modules.get("datasets"), "Dataset", None)
        frame = _dataset_frame(obj) if arrow_dataset is not None and isinstance(obj, arrow_dataset) else obj.to_pandas()
        # ClassLabel columns become ids: their names go with the frame, as a Hub split's do (load_hub_split)
        frame.attrs[CLASS_NAMES] = {column: [str(n) for n in feature.names]
                                    for column, feature in getattr(obj, "features", {}).items()
                                    if hasattr(feature, "names")}
        return frame
    if isinstance(obj, dict):
        return pd.DataFrame(obj)
    raise UserError(f"{path} holds a {type(obj).__name__}; expected a datasets.Dataset or a pandas DataFrame")


HUB_SPEC_FORMS = "DATASET_ID:SPLIT or DATASET_ID:CONFIG:SPLIT (e.g. fancyzhx/ag_news:test, glue:sst2:validation)"
_HUB_DATASET_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")  # owner/name or a canonical name: no colon, no backslash
_HUB_CONFIG = re.compile(r"[^\s:\[\]]+")  # a config name (sst2, 20220301.en, en-de)
_HUB_SPLIT = re.compile(r"\w[^\s:\[]*(?:\[\S*)?")  # a split name, maybe sliced or joined: test[:100], train+test


def parse_hub_spec(spec: str, setting: str = "--data") -> tuple[str, Optional[str], str]:
    """(dataset, config or None, split) of `DATASET_ID:SPLIT` or `DATASET_ID:CONFIG:SPLIT`.

    A dataset id has no colon, and a split has one only inside a slice (test[:100]): so a colon before the first
    `[` after the dataset id separates a config name. `@` was not used: the Hub writes `id@revision` with it."""
    dataset, _, rest = spec.partition(":")
    config, split = rest.split(":", 1) if ":" in rest.split("[", 1)[0] else (None, rest)
    problem = (f"'{dataset}' is no dataset id" if not _HUB_DATASET_ID.fullmatch(dataset)
               else f"'{config}' is no config name" if config is not None and not _HUB_CONFIG.fullmatch(config)
               else f"'{split}' is no split name" if not _HUB_SPLIT.fullmatch(split) else None)
    if problem:  # a local path that does not exist lands here too (C:\data\test.csv): say both
        raise UserError(f"{setting} {spec}: no such file, and not a Hub split ({problem}); give a file path or a Hub "
                        f"split as {HUB_SPEC_FORMS}")
    return dataset, config, split


# train takes --train-file and --eval-file; sweep only --train-file, but every command reads the config's settings
# the eval file is optional: without one a validation split is carved from the training file
LOCAL_DATA_INSTEAD = ("--train-file PATH, and --eval-file PATH if you have a validation file; or data.train_file and "
                      "data.eval_file in the config")


def _hub_dataset_error(dataset: str, config_name: Optional[str], split: str, exc: Exception,
                       local_instead: str) -> HubUnreachableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    reason = "HF_HUB_OFFLINE is set and it is not cached" if offline else "the Hugging Face Hub could not be reached or has no such dataset"
    config = f" config '{config_name}'" if config_name else ""
    return HubUnreachableError(
        f"cannot load dataset '{dataset}'{config} split '{split}': {reason} ({type(exc).__name__}); "
        f"pass local files instead ({local_instead})"
    )


def check_hub_dataset(dataset: str, config_name: Optional[str], split: str,
                      local_instead: str = LOCAL_DATA_INSTEAD) -> None:
    """Fail now if a Hub dataset cannot load, reading its metadata only (no rows): a sweep checks once, where every
    trial would otherwise fail on its own after loading the model."""
    import datasets

    try:
        datasets.load_dataset_builder(dataset, config_name)
    except Exception as exc:  # datasets raises many types for network and naming problems
        raise _hub_dataset_error(dataset, config_name, split, exc, local_instead) from None


def load_hub_split(dataset: str, config_name: Optional[str], split: str, label_column: Optional[str] = None,
                   local_instead: str = LOCAL_DATA_INSTEAD) -> tuple[pd.DataFrame, Optional[list[str]]]:
    """A Hub dataset split as a DataFrame, plus its class names when the label column is a ClassLabel.
    local_instead: the options that take a local file instead, named when the Hub fails."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config_name, split=split)
    except Exception as exc:  # datasets raises many types for network and naming problems
        raise _hub_dataset_error(dataset, config_name, split, exc, local_instead) from None
    if len(ds) == 0:  # a slice past the end (test[8000:]): evaluate failed on sklearn's traceback, train on the carve
        config = f" config '{config_name}'" if config_name else ""
        raise UserError(f"dataset '{dataset}'{config} split '{split}' has no rows; give a split or slice that "
                        f"holds rows (e.g. {dataset}:{split.split('[', 1)[0]}[:100])")
    # Only the label column's own names: a dataset may hold other ClassLabel columns (TREC: coarse and fine labels)
    feature = ds.features.get(label_column) if label_column else None
    # As text: ClassLabel takes any names (names=[1, 2, 3]), and class names are text everywhere else (labels.json)
    names = [str(n) for n in feature.names] if hasattr(feature, "names") else None
    return ds.to_pandas(), names


def file_class_names(frame: pd.DataFrame, column: str) -> Optional[list[str]]:
    """The class names of a file's label column when the file names them (a pickled Dataset's ClassLabel)."""
    return frame.attrs.get(CLASS_NAMES, {}).get(column)


def class_ids_as_names(frame: pd.DataFrame, column: str, class_names: Optional[list[str]],
                       run_names: Optional[list[str]]) -> pd.DataFrame:
    """A ClassLabel column's integer labels (a Hub split, a pickled Dataset) are ids in its own class list, and the
    run's ids follow its labels.json, whose order can differ: a run trained on a CSV of text labels has them sorted
    (Business, Sci/Tech, Sports, World), fancyzhx/ag_news lists World, Sports, Business, Sci/Tech, and ids read as
    positions scored every row against the wrong class without a word. Where the lists share only some classes (a
    split filtered to some classes keeps all its names; a run trained on some of them) the labels are matched by
    name too, and a class the run lacks is left for encode_labels to refuse. Otherwise (a run trained on ids,
    labels.json 0..K-1; unrelated names) ids stay ids, and ids outside the class list are left for encode_labels
    to refuse."""
    if not class_names or not run_names or list(class_names) == list(run_names) \
            or not _same_classes_by_name(class_names, run_names):
        return frame
    if column not in frame or not all(isinstance(v, (int, np.integer)) and 0 <= v < len(class_names)
                                      for v in frame[column]):
        return frame
    named = frame.copy()
    named[column] = [class_names[v] for v in frame[column]]
    return named


def _same_classes_by_name(class_names: list[str], run_names: list[str]) -> bool:
    """Whether a ClassLabel's ids should be read through their names: the same classes, or some classes in common
    where the run's classes are names (a run trained on ids has 0..K-1, which name none of a dataset's classes)."""
    classes, run = set(class_names), set(run_names)
    if classes == run:
        return True
    return list(run_names) != [str(i) for i in range(len(run_names))] and bool(classes & run)


def _check_columns(frame: pd.DataFrame, columns: list[str], source: str, role: str, setting: str,
                   fix: Optional[str] = None) -> None:
    """fix: what to do instead of naming the right column with `setting` (where that setting is not the way)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(
            f"{source} has no {role} column {', '.join(repr(c) for c in missing)}; available: "
            f"{', '.join(map(str, frame.columns))}; {fix or f'name the right one with {setting}'}"
        )


def join_texts(frame: pd.DataFrame, columns: list[str], separator: str, source: str, allow_empty: bool,
               setting: str = "data.text_columns", fix: Optional[str] = None) -> list[str]:
    """The text of each row (several columns joined); missing or blank text is an error unless allowed."""
    _check_columns(frame, columns, source, "text", setting, fix)
    parts = []
    for column in columns:
        values = frame[column]
        missing = values.isna().to_numpy()
        parts.append(["" if m else str(v) for v, m in zip(values.tolist(), missing)])
    texts = [separator.join(p for p in row if p) for row in zip(*parts)]
    _refuse_invalid_unicode(texts, source)
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank and not allow_empty:
        raise UserError(f"{source} has {len(blank)} empty or missing texts at rows {_rows(blank)}; fill or remove those rows")
    return texts


def _refuse_invalid_unicode(texts: list[str], source: str) -> None:
    """A text holding a lone surrogate (half of an emoji's pair: a pickle of cut text; CSV, JSON and parquet cannot
    hold one) cannot be encoded: the tokenizer failed with a TypeError traceback, in training and predict alike, and a
    teacher's pass over unlabelled text with a UnicodeEncodeError, after the run folder was written."""
    try:
        "".join(texts).encode("utf-8")  # one pass in C; lone surrogates stay lone when joined
        return
    except UnicodeEncodeError:
        pass
    broken = [i for i, text in enumerate(texts) if not _encodable(text)]
    raise UserError(f"{source} has invalid Unicode (a lone surrogate, half of an emoji's pair) in {len(broken)} of "
                    f"its {len(texts)} rows, the first at row {broken[0]}; re-save those texts as valid text, e.g. "
                    "text.encode('utf-8', 'replace').decode('utf-8')")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _label_value(value):
    """int for integral numbers (1, 1.0, '1'), None for missing, str for names."""
    if value is None or value is pd.NA:  # pd.NA: nullable columns (parquet Int64, pandas strings)
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):  # any float width: a float32 NaN is no Python float
        number = float(value)
        if math.isnan(number):
            return None
        return int(number) if number.is_integer() else str(value)
    text = str(value).strip()
    # "nan" is a missing number written as text (astype(str)); "None", "null" and "NA" are class names like any
    # other (intent and relation datasets have a class "none"): they were refused as missing labels
    if text == "" or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


def encode_labels(values, label_names: Optional[list[str]], num_labels: int, source: str,
                  class_label: bool = False) -> tuple[np.ndarray, list[str]]:
    """Class ids for a label column of ints or names; names map through label_names (else sorted). class_label: the
    column is a ClassLabel's (a Hub split, a pickled Dataset), whose integers are ids whatever the names."""
    # A ClassLabel column holds ids; where class_ids_as_names has put its names in their place, they are names, even
    # numbered ones ('1'..'4'), which _label_value would read as integers and so as ids, by position
    names_given = class_label and all(isinstance(v, str) for v in values)
    parsed = list(values) if names_given else [_label_value(v) for v in values]
    missing = [i for i, v in enumerate(parsed) if v is None]
    if missing:
        raise UserError(f"{source} has {len(missing)} missing (NaN/empty) labels at rows {_rows(missing)}; fill or remove those rows")
    kinds = {type(v) for v in parsed}
    if kinds == {int, str}:
        first_str = next(i for i, v in enumerate(parsed) if isinstance(v, str))
        raise UserError(
            f"{source} mixes integer and text labels (first text label {parsed[first_str]!r} at row {first_str}); "
            "use one kind throughout"
        )
    if kinds == {int} and label_names and not class_label and _numbered_names(label_names):
        parsed = _ids_of_numbered_names(parsed, list(label_names), source)
    if kinds == {int}:
        names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        bad = [i for i, v in enumerate(parsed) if not 0 <= v < len(names)]  # before int64: 1e20 would overflow it
        if bad:
            one_based = min(parsed) == 1 and max(parsed) == len(names)
            fix = (f"they look numbered 1..{len(names)}: subtract 1 from every label" if one_based
                   else "fix those rows or set model.num_labels")
            raise UserError(
                f"{source} has labels outside 0..{len(names) - 1} at rows {_rows(bad)} (e.g. {parsed[bad[0]]}); {fix}"
            )
        return np.asarray(parsed, dtype=np.int64), names
    names = list(label_names) if label_names else sorted(set(parsed))
    index = {name: i for i, name in enumerate(names)}
    unknown = [i for i, v in enumerate(parsed) if v not in index]
    if unknown:
        raise UserError(
            f"{source} has labels outside the label set {names} at rows {_rows(unknown)} (e.g. {parsed[unknown[0]]!r}); "
            "fix those rows or list every class in data.label_names"
        )
    return np.asarray([index[v] for v in parsed], dtype=np.int64), names


def _numbered_names(names: list[str]) -> bool:
    """Class names that are whole numbers other than their own ids (['1', '2', '3', '4']): a label 1 may be either."""
    return all(re.fullmatch(r"-?\d+", str(n)) for n in names) and [int(n) for n in names] != list(range(len(names)))


def _ids_of_numbered_names(parsed: list[int], names: list[str], source: str) -> list[int]:
    """Integer labels under numbered class names: ids where only ids fit (0 with names 1..4), names where only names
    fit (4 with names 1..4, as AG News's own files number World..Sci/Tech), and refused where both fit. A file whose
    labels were 1..3 under names '1'..'4' was read as ids, every row shifted one class with no word."""
    by_name = {int(n): i for i, n in enumerate(names)}
    as_names = all(v in by_name for v in parsed)
    as_ids = all(0 <= v < len(names) for v in parsed)
    if as_names and not as_ids:
        return [by_name[v] for v in parsed]
    if as_names and as_ids:
        raise UserError(f"{source}'s labels ({', '.join(map(str, sorted(set(parsed))[:6]))}) could be class ids or "
                        f"the numbered class names of data.label_names {names}, which put them in different classes; "
                        f"give the classes names that are not numbers (e.g. 'class {names[0]}'), and the labels as "
                        f"class ids 0..{len(names) - 1} or as those names")
    return parsed


def labelled_from_frame(frame: pd.DataFrame, cfg: DataConfig, num_labels: int, source: str,
                        label_names: Optional[list[str]] = None, column_fix: Optional[str] = None,
                        class_label: bool = False) -> LabelledData:
    """column_fix: what to do about a missing column where naming another with a data setting is not the way;
    class_label: the label column is a ClassLabel's (encode_labels)."""
    texts = join_texts(frame, cfg.text_columns, cfg.text_separator, source, allow_empty=False, fix=column_fix)
    _check_columns(frame, [cfg.label_column], source, "label", "data.label_column", column_fix)
    labels, names = encode_labels(frame[cfg.label_column].tolist(), cfg.label_names or label_names, num_labels, source,
                                  class_label)
    return LabelledData(texts, labels, names, source)


def load_labelled(cfg: DataConfig, num_labels: int, path: Optional[str] = None, hub_split: Optional[str] = None,
                  label_names: Optional[list[str]] = None) -> LabelledData:
    """Labelled rows from a local file (path) or a Hub split (cfg.dataset, hub_split)."""
    if path is not None:
        frame, source = read_table(path, cfg.trust_pickle), str(path)
        class_names = file_class_names(frame, cfg.label_column)
    else:
        split = hub_split or cfg.train_split
        frame, class_names = load_hub_split(cfg.dataset, cfg.dataset_config, split, cfg.label_column)
        source = f"{cfg.dataset}:{split}"
    # data.label_names in another order than the ClassLabel's (sorted, say): ids are matched by name, not position
    frame = class_ids_as_names(frame, cfg.label_column, class_names, cfg.label_names or label_names)
    return labelled_from_frame(frame, cfg, num_labels, source, label_names or class_names,
                               class_label=class_names is not None)


def check_class_count(data: LabelledData, num_labels: int) -> None:
    if len(data.label_names) != num_labels:
        raise UserError(
            f"{data.source} has {len(data.label_names)} classes ({', '.join(map(str, data.label_names))}) but "
            f"model.num_labels is {num_labels}; set --model.num_labels {len(data.label_names)}"
        )


def validation_rows(n_train: int, cfg: DataConfig) -> int:
    return max(1, min(cfg.validation_size, int(n_train * cfg.validation_fraction)))


def carve_validation(data: LabelledData, cfg: DataConfig, seed: int) -> tuple[LabelledData, LabelledData]:
    """Stratified, seeded split: the same seed always gives the same validation rows."""
    from sklearn.model_selection import train_test_split

    n_eval = validation_rows(len(data), cfg)
    indices = np.arange(len(data))
    try:
        train_idx, eval_idx = train_test_split(indices, test_size=n_eval, stratify=data.labels, random_state=seed)
    except ValueError as exc:
        raise UserError(
            f"cannot carve a stratified validation split of {n_eval} rows from {len(data)} rows ({exc}); "
            "give more rows or an --eval-file"
        ) from None
    return data.subset(sorted(train_idx)), data.subset(sorted(eval_idx))


def limit_rows(data: LabelledData, limit: Optional[int], seed: int) -> LabelledData:
    if limit is None or limit >= len(data):
        return data
    order = np.random.default_rng(seed).permutation(len(data))[:limit]
    return data.subset(sorted(order))


def tokenize(texts: list[str], tokenizer, max_length: int, labels: Optional[np.ndarray] = None):
    """Tokenize once with the fast tokenizer (no padding: batches pad themselves); keep each row's length."""
    import datasets

    columns = {"text": texts}
    if labels is not None:
        columns["labels"] = labels.tolist()
    ds = datasets.Dataset.from_dict(columns)

    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    # A fresh fingerprint, because datasets otherwise names the result by dill-hashing `encode` with the whole
    # tokenizer in it: measured 7-9x the tokenizing itself on 600 rows with roberta's tokenizer loaded from
    # tokenizer.json (bench/tokenize_fingerprint.py). The dataset lives in memory: no cached result to find anyway.
    return ds.map(encode, batched=True, batch_size=1000, remove_columns=["text"], new_fingerprint=uuid.uuid4().hex)
