"""Text -> packed training blocks for PHOTON, with `datasets`.

Three kinds of source give the same result, a `DatasetDict` with a "train" and a "validation" split of documents
(one "text" column):

* the embedded default corpus, `"stdlib"`: the Python standard library's own source files, present on every
  machine that runs Python, so a first training run needs no download. Files are split into train and
  validation by a hash of their path relative to the standard library, so the split never overlaps and a file
  keeps its split on every machine and Python version that has it;
* local files: `.txt` (one document per file) and `.jsonl` / `.json` (one document per record);
* any dataset name on the Hugging Face Hub (when it is reachable), loaded with `datasets.load_dataset`.

`pack_dataset` then tokenizes the documents (an end-of-sequence token after each) and cuts the token stream into
blocks of `block_size` tokens with `labels == input_ids`, ready for `transformers.Trainer` with
`default_data_collator`. Every function handed to `Dataset.map` is a module-level function with its arguments in
`fn_kwargs`, so `num_proc > 1` works (they pickle).

With `streaming=True` the same sources come as `datasets.IterableDataset`s instead, read lazily (local files
and Hub datasets with `load_dataset(..., streaming=True)`), and `pack_dataset` packs them on the fly: nothing is
tokenized ahead or written to the `datasets` cache, and no more is held than the batch of `map_batch_size`
documents being packed (and `training_stream`'s shuffle buffer).
`training_stream` makes the packed stream endless, shuffles it in a bounded buffer and gives each process of a
distributed run its own share (`datasets.distributed.split_dataset_by_node`).

The default tokenizer, `byte_tokenizer()`, needs no download either: 256 byte tokens plus `<pad>`, `<bos>` and
`<eos>`, built in code with the `tokenizers` library and returned as a `PreTrainedTokenizerFast`, so it saves to
`tokenizer.json` and loads back with `AutoTokenizer.from_pretrained` without custom code.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import sysconfig
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

DEFAULT_CORPUS = "stdlib"
BYTE_TOKENIZER = "bytes"
TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
SPLIT_KEY = "_photon_split_key"


def _require_datasets():
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "photon_hf.data needs the `datasets` library: install the training extras (pip install '.[train]' in a "
            "photon_hf checkout, or pip install datasets)."
        ) from error
    return datasets


# ------------------------------------------------------------------------------------------------- tokenizers
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of the `ByteLevel` pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def byte_tokenizer(model_max_length: int = 1 << 20) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that needs no download: token id b is the byte b (0..255), then `<pad>` (256),
    `<bos>` (257) and `<eos>` (258); `len(tokenizer) == 259`.

    Any text round-trips exactly (`decode(encode(text)) == text`). It pads on the left, as PHOTON's cached
    generation needs. `save_pretrained` writes a `tokenizer.json` that `AutoTokenizer.from_pretrained` loads back
    with no custom code.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<pad>", "<bos>", "<eos>"])  # ids 256, 257, 258 in this order
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
        model_max_length=model_max_length,
    )


def load_tokenizer(name_or_path: str | None = None, **kwargs) -> PreTrainedTokenizerBase:
    """The tokenizer to train with: `None` or `"bytes"` gives `byte_tokenizer()`; anything else goes to
    `AutoTokenizer.from_pretrained` (a local folder, or a Hub name when the Hub is reachable).

    A tokenizer without a pad token gets its end-of-sequence token as pad token, and padding goes on the left
    (PHOTON generation with a padded batch needs left padding).
    """
    if name_or_path in (None, BYTE_TOKENIZER):
        return byte_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer {name_or_path!r} has no end-of-sequence token; PHOTON's packing separates documents "
            "with it. Set one (tokenizer.add_special_tokens({'eos_token': ...})) or use the byte tokenizer."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# ------------------------------------------------------------------------------------------- splitting helpers
def split_key(name: str) -> float:
    """A number in [0, 1) fixed by `name` alone (SHA-256), used to put a document into a split."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_validation(name: str, validation_fraction: float) -> bool:
    """Whether the document named `name` (a relative path, or a document's text) belongs to the validation split."""
    return split_key(name) < validation_fraction


def _check_fraction(validation_fraction: float):
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` (--validation-fraction) must lie strictly between 0 and 1, got "
            f"{validation_fraction!r} (0.05 holds out about one document in twenty)."
        )


# -------------------------------------------------------------------------------------- the embedded corpus
def stdlib_root() -> Path:
    """The folder of the Python standard library's source (`sysconfig.get_paths()["stdlib"]`)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(split: str | None = None, validation_fraction: float = 0.05) -> list[str]:
    """Relative (POSIX) paths of the standard library's `.py` files, sorted, optionally only those of one split.

    Installed third-party packages (`site-packages`, `dist-packages`) are left out. A file is in "validation"
    when `is_validation(relative_path, validation_fraction)`, else in "train".
    """
    if split not in (None, "train", "validation"):
        raise ValueError(f"`split` must be None, 'train' or 'validation', got {split!r}.")
    _check_fraction(validation_fraction)
    root = stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(
            f"The Python standard library sources are not at {root} (sysconfig's 'stdlib' path); pass a dataset "
            "or local text files instead of the default corpus."
        )
    paths = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if relative.parts[0] in ("site-packages", "dist-packages"):
            continue
        paths.append(relative.as_posix())
    paths.sort()
    if split is not None:
        keep_validation = split == "validation"
        paths = [p for p in paths if is_validation(p, validation_fraction) == keep_validation]
    return paths


def _stdlib_documents(root: str, paths: list[str]):
    """One {"text", "path"} record per UTF-8 file."""
    for relative in paths:
        try:
            text = (Path(root) / relative).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):  # a handful of encoding test files are not UTF-8
            continue
        if text.strip():
            yield {"text": text, "path": relative}


def load_stdlib_corpus(validation_fraction: float = 0.05, max_files: int | None = None, streaming: bool = False):
    """The embedded default corpus as a `DatasetDict` ("train", "validation"; columns "text" and "path").

    The files are read into memory (about 30 MB, a second or two) rather than into the `datasets` cache: re-reading
    them is cheaper than keeping a copy on disk, and what is built from an in-memory dataset (`pack_dataset`) stays
    in memory too. `max_files` keeps the first files of each split (in path order), for quick runs. With
    `streaming`, an `IterableDatasetDict` that reads each file when the iteration reaches it (one shard per file).
    """
    datasets = _require_datasets()
    root = str(stdlib_root())
    features = datasets.Features({"text": datasets.Value("string"), "path": datasets.Value("string")})
    splits = {}
    for split in ("train", "validation"):
        paths = stdlib_files(split, validation_fraction)
        if max_files is not None:
            paths = paths[:max_files]
        if streaming:
            splits[split] = datasets.IterableDataset.from_generator(
                _stdlib_documents, features=features, gen_kwargs={"root": root, "paths": paths}
            )
        else:
            splits[split] = datasets.Dataset.from_list(list(_stdlib_documents(root, paths)), features=features)
    return datasets.IterableDatasetDict(splits) if streaming else datasets.DatasetDict(splits)


# ------------------------------------------------------------------------------------------- any text source
def _local_files(source: str) -> list[str] | None:
    """The files a local source names (a file, a folder searched recursively, or a glob), or None if it names
    nothing on disk."""
    if os.path.isfile(source):
        return [source]
    if os.path.isdir(source):
        found = [
            str(p) for p in sorted(Path(source).rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES + JSON_SUFFIXES
        ]
        if not found:
            raise FileNotFoundError(f"No .txt, .jsonl or .json files under the folder {source!r}.")
        return found
    if glob.has_magic(source):
        found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(f"The pattern {source!r} matches no file.")
        return found
    return None


def _load_local(files: list[str], text_column: str, cache_dir: str | None, streaming: bool = False):
    datasets = _require_datasets()
    suffixes = {Path(f).suffix for f in files}
    common = dict(data_files=files, split="train", cache_dir=cache_dir, streaming=streaming)
    if suffixes <= set(TEXT_SUFFIXES):
        return datasets.load_dataset("text", sample_by="document", **common)
    if suffixes <= set(JSON_SUFFIXES):
        dataset = datasets.load_dataset("json", **common)
        _check_text_column(dataset, text_column, "The JSON records have", "field")
        return dataset
    raise ValueError(
        f"Local files must be all .txt or all .jsonl/.json, got suffixes {sorted(suffixes)}. Pass one kind at a time."
    )


def _check_text_column(dataset, text_column: str, what: str, kind: str = "column"):
    """Raise a `ValueError` naming `--text-column` unless `dataset` has `text_column` (`what`: "The dataset X has").
    A stream whose columns are not known ahead is checked on its first record."""
    columns = dataset.column_names
    if columns is None:
        first = next(iter(dataset.take(1)), None)
        if first is None:
            raise ValueError(f"{what} no document.")
        columns = list(first)
    if text_column not in columns:
        raise ValueError(
            f"{what} no {text_column!r} {kind} ({kind}s: {columns}); pass `text_column=` (--text-column) with the "
            f"{kind} that holds the text."
        )


def _split_keys(batch: dict, text_column: str) -> dict:
    return {SPLIT_KEY: [split_key(text) for text in batch[text_column]]}


def _in_split(batch: dict, text_column: str, validation_fraction: float, validation: bool) -> list[bool]:
    """`IterableDataset.filter` function: which documents of a batch are in the split (`validation` or train)."""
    return [is_validation(text, validation_fraction) == validation for text in batch[text_column]]


def split_documents(dataset, validation_fraction: float = 0.05, text_column: str = "text", num_proc: int | None = None):
    """Split documents into "train" and "validation" by a hash of each document's text: deterministic, independent
    of the order, and identical documents always land in the same split.

    A `Dataset` gives a `DatasetDict`: if the hash puts no document into validation, the one with the smallest hash
    goes there (with two or more documents, both splits are never empty). An `IterableDataset` gives an
    `IterableDatasetDict` of two filtered streams, which hold the same documents as the `Dataset` would (without the
    smallest-hash rule: a stream has no end to look ahead to).
    """
    datasets = _require_datasets()
    _check_fraction(validation_fraction)
    if isinstance(dataset, datasets.IterableDataset):
        splits = {}
        for split in ("train", "validation"):
            arguments = dict(text_column=text_column, validation_fraction=validation_fraction)
            splits[split] = dataset.filter(
                _in_split, batched=True, fn_kwargs={**arguments, "validation": split == "validation"}
            )
        return datasets.IterableDatasetDict(splits)
    if len(dataset) < 2:
        raise ValueError(
            f"Cannot hold out validation documents from {len(dataset)} document(s): give more files (a .txt file is "
            "one document, a .jsonl record is one) or separate validation files (`validation_source=`; "
            "--validation-data on the command line)."
        )
    keyed = dataset.map(_split_keys, batched=True, num_proc=num_proc, fn_kwargs={"text_column": text_column})
    keys = keyed[SPLIT_KEY]
    validation = [i for i, key in enumerate(keys) if key < validation_fraction]
    if not validation:
        validation = [min(range(len(keys)), key=keys.__getitem__)]
    if len(validation) == len(keys):
        raise ValueError(
            f"validation_fraction={validation_fraction} (--validation-fraction) puts every document into validation; "
            "lower it."
        )
    chosen = set(validation)
    train = [i for i in range(len(keys)) if i not in chosen]
    keyed = keyed.remove_columns(SPLIT_KEY)
    return datasets.DatasetDict({"train": keyed.select(train), "validation": keyed.select(validation)})


def load_text_corpus(
    source: str | None = None,
    *,
    name: str | None = None,
    validation_source: str | None = None,
    text_column: str = "text",
    validation_fraction: float = 0.05,
    max_files: int | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
):
    """Documents to train on, as a `DatasetDict` with "train" and "validation" splits holding `text_column`.

    Args:
        source: `None` or `"stdlib"` for the embedded default corpus; a local `.txt`/`.jsonl`/`.json` file, a
            folder of them or a glob; otherwise a dataset name for `datasets.load_dataset` (needs the Hub).
        name: the dataset configuration, for Hub datasets (e.g. "wikitext-2-raw-v1").
        validation_source: local files to validate on instead. Without them a Hub dataset's own "validation" (or
            "test") split is used, else documents are held out by hash (`split_documents`).
        text_column: the column or JSON field holding the text.
        validation_fraction: the share of documents (files for the default corpus) held out for validation.
        max_files: default corpus only: keep the first files of each split.
        num_proc: worker processes for `datasets.map`.
        cache_dir: `datasets` cache folder (local files and Hub datasets; the default corpus stays in memory).
        streaming: return an `IterableDatasetDict` whose splits read the documents as they are iterated
            (`load_dataset(..., streaming=True)`): nothing is loaded, downloaded ahead or cached. The splits hold the
            same documents as without streaming, except that a single document is not moved into an empty
            validation split.
    """
    datasets = _require_datasets()
    if source in (None, DEFAULT_CORPUS):
        if validation_source is not None:
            raise ValueError(
                "The default corpus brings its own validation files; drop `validation_source` (--validation-data)."
            )
        return load_stdlib_corpus(validation_fraction, max_files=max_files, streaming=streaming)
    if max_files is not None:
        raise ValueError(
            "`max_files` (--max-files) applies to the default corpus only; select rows of your dataset instead."
        )
    files = _local_files(source)
    train = _load_local(files, text_column, cache_dir, streaming) if files is not None else None
    held_out = None
    if train is None:
        train, held_out = _load_hub(source, name, text_column, cache_dir, streaming)
    if validation_source is not None:
        validation_files = _local_files(validation_source)
        if validation_files is None:
            raise FileNotFoundError(
                f"The validation source {validation_source!r} (`validation_source`, --validation-data) names no local "
                "file."
            )
        held_out = _load_local(validation_files, text_column, cache_dir, streaming)
    if held_out is None:
        return split_documents(train, validation_fraction, text_column, num_proc)
    splits = {"train": train, "validation": held_out}
    return datasets.IterableDatasetDict(splits) if streaming else datasets.DatasetDict(splits)


def _load_hub(source: str, name: str | None, text_column: str, cache_dir: str | None, streaming: bool = False):
    """(train split, validation or test split or None) of a dataset loaded with `datasets.load_dataset`."""
    datasets = _require_datasets()
    try:
        loaded = datasets.load_dataset(source, name, cache_dir=cache_dir, streaming=streaming)
    except Exception as error:
        raise ValueError(
            f"Could not load {source!r}: it is neither a local file, folder or glob, nor a dataset that "
            f"`datasets.load_dataset` can fetch ({type(error).__name__}: {error}). Check the path, or the dataset "
            "name and network access."
        ) from error
    if "train" not in loaded:
        raise ValueError(f"The dataset {source!r} has no 'train' split (splits: {list(loaded)}).")
    _check_text_column(loaded["train"], text_column, f"The dataset {source!r} has")
    held_out = next((loaded[split] for split in ("validation", "test") if split in loaded), None)
    return loaded["train"], held_out


# -------------------------------------------------------------------------------------------------- packing
def is_byte_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` is `byte_tokenizer()` (or one saved from it): then a text's token ids are its UTF-8
    bytes, and packing skips the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("merges") or spec.get("normalizer") is not None:
        return False
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        return False
    alphabet = _bytes_to_unicode()
    return model.get("vocab") == {alphabet[b]: b for b in range(256)}


def token_id_dtype(vocab_size: int) -> str:
    """The narrowest unsigned integer type that holds every token id below `vocab_size` ("uint8", "uint16" or
    "uint32"): packed blocks are stored with it (2 bytes a token for the byte tokenizer's 259 ids instead of 8)."""
    for dtype in ("uint8", "uint16", "uint32"):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return dtype
    return "int64"


def _pack_documents(
    batch: dict,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    block_size: int,
    byte_level: bool,
    dtype: str = "int64",
    as_lists: bool = False,
) -> dict:
    """Tokenize a batch of documents, put the end-of-sequence token after each, concatenate them and cut the
    stream into blocks of `block_size` tokens of type `dtype` (the remainder of the batch is dropped). `labels`
    are the inputs (the model shifts them). Special-token strings inside the text (e.g. a literal "<eos>") are
    tokenized as text. `as_lists`: each block a list of Python ints rather than a row of one array (a stream's
    blocks live on apart in a shuffle buffer, where a row would keep its whole batch's array alive)."""
    eos = np.array([tokenizer.eos_token_id], dtype=dtype)
    if byte_level:
        ids = [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in batch[text_column]]
    else:
        encoded = tokenizer(batch[text_column], add_special_tokens=False, split_special_tokens=True, verbose=False)
        ids = [np.asarray(x, dtype=np.int64) for x in encoded["input_ids"]]
    if not ids:
        return {"input_ids": [], "labels": []}
    stream = np.concatenate([part for x in ids for part in (x.astype(dtype), eos)])
    usable = len(stream) // block_size * block_size
    blocks = stream[:usable].reshape(-1, block_size)
    if as_lists:
        blocks = blocks.tolist()
    return {"input_ids": blocks, "labels": blocks}


def pack_dataset(
    dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    *,
    text_column: str = "text",
    num_proc: int | None = None,
    map_batch_size: int = 1000,
    max_blocks: int | None = None,
):
    """Tokenize the documents of a `Dataset` or `IterableDataset` (or every split of a `DatasetDict` /
    `IterableDatasetDict`) and pack them into blocks.

    Returns the same kind of object with two columns, `input_ids` and `labels`, of `block_size` tokens each, stored
    as the narrowest integer type that holds the vocabulary (`token_id_dtype`; rows read back as Python ints and
    `default_data_collator` makes int64 tensors of them). Documents are separated by the end-of-sequence token. Up
    to `block_size - 1` tokens at the end of each `map_batch_size` documents are dropped. `max_blocks` keeps that
    many blocks (of each split), evenly spaced over the corpus. The blocks go to the `datasets` cache when
    `dataset` has cache files, and stay in memory when it is in memory (as the default corpus is).

    An `IterableDataset` is packed on the fly as it is iterated, `map_batch_size` documents at a time (in the
    process that iterates it, so `num_proc` does not apply), into blocks of Python ints, as the rows of a stored
    dataset read back; `max_blocks` then keeps its first blocks.
    """
    datasets = _require_datasets()
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"`block_size` (--block-size) must be an int >= 2, got {block_size!r}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no end-of-sequence token; `load_tokenizer` explains how to set one.")
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)(
            {
                split: pack_dataset(
                    part,
                    tokenizer,
                    block_size,
                    text_column=text_column,
                    num_proc=num_proc,
                    map_batch_size=map_batch_size,
                    max_blocks=max_blocks,
                )
                for split, part in dataset.items()
            }
        )
    streaming = isinstance(dataset, datasets.IterableDataset)
    if streaming and num_proc is not None and num_proc > 1:
        raise ValueError(
            "An IterableDataset is packed on the fly by the process that reads it: `num_proc` (--num-proc) applies "
            "to in-memory datasets only."
        )
    if not streaming and text_column not in dataset.column_names:
        raise ValueError(f"The dataset has no {text_column!r} column (columns: {dataset.column_names}).")
    if num_proc is not None and num_proc > 1:
        # A forked worker must not reuse the parent's tokenizer thread pool.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dtype = token_id_dtype(max(len(tokenizer), tokenizer.vocab_size))
    ids = datasets.Sequence(datasets.Value(dtype), length=block_size)
    pack = dict(
        function=_pack_documents,
        batched=True,
        batch_size=map_batch_size,
        features=datasets.Features({"input_ids": ids, "labels": ids}),
        fn_kwargs={
            "tokenizer": tokenizer,
            "text_column": text_column,
            "block_size": block_size,
            "byte_level": is_byte_tokenizer(tokenizer),
            "dtype": dtype,
            "as_lists": streaming,
        },
    )
    if streaming:  # a stream's columns may be unknown until it is read: keep the text alone, then replace it
        packed = dataset.select_columns([text_column]).map(remove_columns=[text_column], **pack)
        return packed.take(max_blocks) if max_blocks is not None else packed
    packed = dataset.map(
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc=f"Tokenizing and packing into blocks of {block_size}",
        **pack,
    )
    if len(packed) == 0:
        raise ValueError(
            f"No block of {block_size} tokens could be made: the documents are too short. Lower `block_size` "
            "(--block-size) or give more text."
        )
    if max_blocks is not None and len(packed) > max_blocks:
        packed = packed.select(np.linspace(0, len(packed) - 1, max_blocks).round().astype(np.int64).tolist())
    return packed


def first_blocks(blocks, count: int):
    """The first `count` blocks of a packed `IterableDataset`, as an in-memory `Dataset` (a fixed evaluation set
    cut from a stream; fewer if the stream ends first). Raises a `ValueError` if the stream yields no block."""
    datasets = _require_datasets()
    rows = list(blocks.take(count))
    if not rows:
        raise ValueError(
            "The validation stream gave no block: its documents are too few or too short. Pass separate validation "
            "files (`validation_source=`, --validation-data), raise `validation_fraction` (--validation-fraction) "
            "or lower `block_size` (--block-size)."
        )
    return datasets.Dataset.from_list(rows, features=blocks.features)


def training_stream(blocks, *, seed: int = 0, shuffle_buffer: int = 1000, rank: int = 0, world_size: int = 1):
    """Packed blocks (`pack_dataset` of an `IterableDataset`) as the training stream of process `rank` out of
    `world_size`: repeated without end (a run stops at `max_steps`), shuffled with `seed` (the order of the shards,
    then the blocks in a buffer of `shuffle_buffer`; 0 keeps the corpus's order), and split between processes with
    `datasets.distributed.split_dataset_by_node`.

    The split gives each process whole shards (files) when their number is a multiple of `world_size`: then the
    processes read disjoint data. Otherwise every process reads the whole stream and keeps every `world_size`-th
    block, so that `world_size` processes with batch b see per step the blocks one process with batch
    `world_size x b` sees.
    """
    _require_datasets()
    from datasets.distributed import split_dataset_by_node

    stream = blocks.repeat(None)
    if shuffle_buffer:
        shuffle = dict(seed=seed, buffer_size=shuffle_buffer)
        if "max_buffer_input_shards" in inspect.signature(stream.shuffle).parameters:
            # datasets >= 5 fills the buffer from up to 10 shards read at once, each with its own batch of documents
            # being packed: memory would grow with the shard count. One shard at a time keeps it flat.
            shuffle["max_buffer_input_shards"] = 1
        stream = stream.shuffle(**shuffle)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return stream


def load_packed_corpus(
    source: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    block_size: int = 256,
    *,
    max_train_blocks: int | None = None,
    max_eval_blocks: int | None = None,
    num_proc: int | None = None,
    **corpus_kwargs,
):
    """`load_text_corpus` then `pack_dataset` for both splits: a `DatasetDict` of packed "train" and "validation"
    blocks. The tokenizer defaults to `byte_tokenizer()`; `corpus_kwargs` go to `load_text_corpus`."""
    datasets = _require_datasets()
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    text_column = corpus_kwargs.get("text_column", "text")
    corpus = load_text_corpus(source, num_proc=num_proc, **corpus_kwargs)
    return datasets.DatasetDict(
        {
            "train": pack_dataset(
                corpus["train"], tokenizer, block_size, text_column=text_column, num_proc=num_proc,
                max_blocks=max_train_blocks,
            ),
            "validation": pack_dataset(
                corpus["validation"], tokenizer, block_size, text_column=text_column, num_proc=num_proc,
                max_blocks=max_eval_blocks,
            ),
        }
    )
