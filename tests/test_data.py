"""photon_hf.data: byte tokenizer, embedded corpus split, local files, packing (multiprocess), streaming."""

import itertools
import json

import datasets
import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, default_data_collator

from photon_hf import data
from photon_hf.data import (
    byte_tokenizer,
    first_blocks,
    is_byte_tokenizer,
    is_validation,
    load_stdlib_corpus,
    load_text_corpus,
    pack_dataset,
    stdlib_files,
    token_id_dtype,
    training_stream,
)

TRICKY = "héllo wörld 🎉\r\n\tdef f():  # <eos> <pad> literal\n\x00\x7f"


def test_byte_tokenizer_ids_are_bytes_and_round_trip(tmp_path):
    tokenizer = byte_tokenizer()
    assert len(tokenizer) == 259
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (256, 257, 258)
    ids = tokenizer(TRICKY, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == list(TRICKY.encode("utf-8"))
    assert tokenizer.decode(ids) == TRICKY
    # Saved as plain tokenizer.json and loaded back by AutoTokenizer without custom code.
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    assert "auto_map" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(TRICKY, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
    assert loaded.eos_token_id == 258 and loaded.padding_side == "left"
    assert is_byte_tokenizer(tokenizer) and is_byte_tokenizer(loaded)


def test_load_tokenizer_default_and_path(tmp_path):
    assert is_byte_tokenizer(data.load_tokenizer())
    assert is_byte_tokenizer(data.load_tokenizer("bytes"))
    word = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2, "</s>": 3}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word, eos_token="</s>", unk_token="[UNK]").save_pretrained(tmp_path)
    loaded = data.load_tokenizer(str(tmp_path))
    assert not is_byte_tokenizer(loaded)
    assert loaded.pad_token == "</s>" and loaded.padding_side == "left"  # pad falls back to eos


def test_byte_fast_path_equals_the_tokenizer():
    tokenizer = byte_tokenizer()
    batch = {"text": [TRICKY, "x" * 37, "import os\n"]}
    fast = data._pack_documents(batch, tokenizer, "text", 8, byte_level=True)
    slow = data._pack_documents(batch, tokenizer, "text", 8, byte_level=False)
    np.testing.assert_array_equal(fast["input_ids"], slow["input_ids"])
    stream = list(TRICKY.encode()) + [258] + [ord("x")] * 37 + [258] + list(b"import os\n") + [258]
    np.testing.assert_array_equal(fast["input_ids"].reshape(-1), stream[: len(stream) // 8 * 8])


def test_stdlib_split_is_by_file_deterministic_and_disjoint():
    every = stdlib_files()
    train, validation = stdlib_files("train"), stdlib_files("validation")
    assert len(every) > 200 and validation
    assert not set(train) & set(validation)
    assert sorted(train + validation) == every
    assert all(is_validation(path, 0.05) for path in validation)  # a function of the path alone
    assert not any(p.startswith(("site-packages/", "dist-packages/")) for p in every)
    corpus = load_stdlib_corpus(max_files=6)
    assert not set(corpus["train"]["path"]) & set(corpus["validation"]["path"])
    assert set(corpus["validation"]["path"]) <= set(validation)
    assert all(text.strip() for text in corpus["train"]["text"])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        stdlib_files("train", validation_fraction=1.0)


def _write_docs(folder, count):
    folder.mkdir()
    for i in range(count):
        (folder / f"doc{i:02d}.txt").write_text(f"document {i}\n" + "lorem ipsum dolor sit amet\n" * (i + 3))
    return folder


def test_local_text_and_jsonl_files(tmp_path):
    corpus = load_text_corpus(str(_write_docs(tmp_path / "txt", 30)))
    train, validation = list(corpus["train"]["text"]), list(corpus["validation"]["text"])
    assert len(train) + len(validation) == 30 and validation and train
    assert not set(train) & set(validation)
    assert all(text.startswith("document ") for text in train)  # one document per file, whole

    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"record {i} " * 20}) + "\n" for i in range(40)))
    corpus = load_text_corpus(str(jsonl), text_column="body", validation_fraction=0.2)
    assert len(corpus["train"]) + len(corpus["validation"]) == 40
    assert not set(corpus["train"]["body"]) & set(corpus["validation"]["body"])
    # Same split again (by content, not by chance).
    again = load_text_corpus(str(jsonl), text_column="body", validation_fraction=0.2)
    assert list(again["validation"]["body"]) == list(corpus["validation"]["body"])

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"body": "separate validation"}) + "\n")
    corpus = load_text_corpus(str(jsonl), validation_source=str(held_out), text_column="body")
    assert len(corpus["train"]) == 40 and list(corpus["validation"]["body"]) == ["separate validation"]


def test_clear_errors_for_bad_sources(tmp_path):
    single = tmp_path / "one.txt"
    single.write_text("only one document")
    with pytest.raises(ValueError, match="validation_source"):
        load_text_corpus(str(single))
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text(json.dumps({"content": "x"}) + "\n" + json.dumps({"content": "y"}) + "\n")
    with pytest.raises(ValueError, match="--text-column"):
        load_text_corpus(str(jsonl))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        load_text_corpus(str(tmp_path / "*.nothing"))
    # A name that is no local path goes to datasets.load_dataset (offline here): the error says what to check.
    with pytest.raises(ValueError, match="neither a local file"):
        load_text_corpus("no-such-user/no-such-dataset")
    with pytest.raises(ValueError, match="block_size"):
        pack_dataset(Dataset.from_dict({"text": ["a"]}), byte_tokenizer(), 1)
    with pytest.raises(ValueError, match="too short"):
        pack_dataset(Dataset.from_dict({"text": ["ab", "cd"]}), byte_tokenizer(), 64)


def test_pack_dataset_blocks_and_multiprocess(tmp_path):
    docs = [f"doc {i}: " + "abcdefghij" * (i % 7 + 1) for i in range(200)]
    dataset = Dataset.from_dict({"text": docs, "other": list(range(200))})
    tokenizer = byte_tokenizer()
    packed = pack_dataset(dataset, tokenizer, 32, map_batch_size=50)
    assert packed.column_names == ["input_ids", "labels"]
    assert all(len(ids) == 32 for ids in packed["input_ids"])
    assert packed["input_ids"] == packed["labels"]
    # Documents appear in order, each followed by <eos>; only the tail of each map batch is dropped.
    first_batch = "<eos>".join(docs[:50]) + "<eos>"
    text = tokenizer.decode([t for block in packed["input_ids"] for t in block])
    assert text.startswith(first_batch[: len(first_batch) // 32 * 32 - 40])
    parallel = pack_dataset(dataset, tokenizer, 32, map_batch_size=50, num_proc=2)
    assert parallel["input_ids"] == packed["input_ids"]
    # A non-byte tokenizer takes the general path, also across processes.
    word = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2, "</s>": 3}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=word, eos_token="</s>", unk_token="[UNK]")
    words = pack_dataset(Dataset.from_dict({"text": ["a b a", "b b"] * 20}), other, 5, num_proc=2)
    assert words["input_ids"][0] == [0, 1, 0, 3, 1]
    limited = pack_dataset(dataset, tokenizer, 32, max_blocks=5)
    assert len(limited) == 5 and limited["input_ids"][0] == packed["input_ids"][0]


def test_packed_blocks_are_stored_narrow_and_collate_to_int64():
    """Token ids are stored at the narrowest width that holds the vocabulary (2 bytes for the byte tokenizer's 259),
    and still reach the model as int64."""
    from transformers import default_data_collator

    assert [token_id_dtype(n) for n in (256, 257, 65536, 65537)] == ["uint8", "uint16", "uint16", "uint32"]
    docs = Dataset.from_dict({"text": ["\u00e9t\u00e9 " * 40, "<eos> as text " * 10]})
    packed = pack_dataset(docs, byte_tokenizer(), 16)
    assert packed.features["input_ids"].feature.dtype == "uint16"
    assert packed.data.nbytes == len(packed) * 16 * 2 * 2  # two columns of 2-byte ids, nothing else
    batch = default_data_collator([packed[0], packed[1]])
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].dtype == torch.int64
    assert 258 in [t for block in packed["input_ids"] for t in block]  # <eos> (258) does not fit a uint8


def test_the_default_corpus_stays_in_memory():
    """The standard library's files are read into memory, so neither the documents nor their blocks write to the
    `datasets` cache."""
    corpus = load_stdlib_corpus(max_files=3)
    packed = pack_dataset(corpus["train"], byte_tokenizer(), 64)
    assert corpus["train"].cache_files == [] and packed.cache_files == []


def test_hub_dataset_splits(monkeypatch):
    """The Hub path (datasets.load_dataset, stood in for here): its validation or test split is used, else
    documents are held out; a missing text column is explained."""
    import datasets

    calls = []
    splits = {
        "train": Dataset.from_dict({"text": [f"train {i}" for i in range(20)]}),
        "test": Dataset.from_dict({"text": ["test 0", "test 1"]}),
    }

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_text_corpus("someone/texts", name="v1")
    assert calls == [("someone/texts", "v1")]
    assert list(corpus["validation"]["text"]) == ["test 0", "test 1"] and len(corpus["train"]) == 20
    del splits["test"]
    corpus = load_text_corpus("someone/texts", validation_fraction=0.2)
    assert len(corpus["train"]) + len(corpus["validation"]) == 20 and len(corpus["validation"]) >= 1
    with pytest.raises(ValueError, match="has no 'body' column"):
        load_text_corpus("someone/texts", text_column="body")
    # Streamed: load_dataset(..., streaming=True) gives IterableDatasets; their own test split is the validation.
    splits["test"] = Dataset.from_dict({"text": ["test 0", "test 1"]})

    def fake_streaming_load(path, name=None, streaming=False, **kwargs):
        calls.append((path, name, streaming))
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_streaming_load)
    corpus = load_text_corpus("someone/texts", streaming=True)
    assert calls[-1] == ("someone/texts", None, True) and isinstance(corpus["train"], datasets.IterableDataset)
    assert [d["text"] for d in corpus["validation"]] == ["test 0", "test 1"]
    assert len(list(corpus["train"])) == 20
    with pytest.raises(ValueError, match="has no 'body' column"):
        load_text_corpus("someone/texts", text_column="body", streaming=True)


# ------------------------------------------------------------------------------------------------- streaming
def _jsonl(path, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps({"text": f"doc {i}: " + "xyz " * int(rng.integers(1, 30)), "n": i}) + "\n")
    return path


def test_streaming_holds_out_the_same_documents(tmp_path):
    """A stream splits its documents as the in-memory corpus does (by a hash of the text), for local files and the
    default corpus, and reads nothing ahead."""
    jsonl = str(_jsonl(tmp_path / "docs.jsonl", 80))
    in_memory = load_text_corpus(jsonl, validation_fraction=0.2)
    streamed = load_text_corpus(jsonl, validation_fraction=0.2, streaming=True)
    assert isinstance(streamed["train"], datasets.IterableDataset)
    for split in ("train", "validation"):
        assert [d["text"] for d in streamed[split]] == list(in_memory[split]["text"]), split
    stdlib = load_text_corpus(streaming=True, max_files=4)
    assert [d["path"] for d in stdlib["validation"]] == list(load_stdlib_corpus(max_files=4)["validation"]["path"])
    folder = _write_docs(tmp_path / "txt", 12)
    texts = [d["text"] for split in load_text_corpus(str(folder), streaming=True).values() for d in split]
    assert sorted(texts) == sorted(p.read_text() for p in folder.iterdir())  # one document per .txt file
    with pytest.raises(ValueError, match="--text-column"):
        load_text_corpus(jsonl, text_column="body", streaming=True)
    with pytest.raises(ValueError, match="--text-column"):  # a Hub stream's columns are checked on its first record
        data._check_text_column(Dataset.from_dict({"t": ["x"]}).to_iterable_dataset(), "text", "The dataset has")


def test_packing_a_stream_gives_the_in_memory_blocks_and_reads_a_bounded_window(tmp_path):
    docs = [f"doc {i}: " + "abcdefghij" * (i % 7 + 1) for i in range(300)]
    tokenizer = byte_tokenizer()
    in_memory = pack_dataset(Dataset.from_dict({"text": docs}), tokenizer, 32, map_batch_size=50)
    read = []

    def documents(indices):
        for i in indices:
            read.append(i)
            yield {"text": docs[i], "other": i}

    stream = datasets.IterableDataset.from_generator(documents, gen_kwargs={"indices": list(range(300))})
    packed = pack_dataset(stream, tokenizer, 32, map_batch_size=50)
    first = next(iter(packed))
    assert len(read) == 50  # one map batch of documents is read to make the first block, no more
    assert list(first) == ["input_ids", "labels"] and type(first["input_ids"][0]) is int  # as stored rows read back
    rows = list(packed)
    assert [r["input_ids"] for r in rows] == in_memory["input_ids"]
    batch = default_data_collator(rows[:2])
    assert batch["input_ids"].dtype == torch.int64 and torch.equal(batch["input_ids"], batch["labels"])
    assert len(list(pack_dataset(stream, tokenizer, 32, max_blocks=3))) == 3
    assert first_blocks(packed, 4)["input_ids"] == in_memory["input_ids"][:4]
    with pytest.raises(ValueError, match="--num-proc"):
        pack_dataset(stream, tokenizer, 32, num_proc=2)
    with pytest.raises(ValueError, match="--validation-data"):
        first_blocks(pack_dataset(stream.take(1), tokenizer, 4096), 4)


def test_training_stream_is_endless_shuffled_by_seed_and_split_between_processes(tmp_path):
    tokenizer = byte_tokenizer()
    one_file = pack_dataset(load_text_corpus(str(_jsonl(tmp_path / "a.jsonl", 60)), streaming=True)["train"],
                            tokenizer, 16)
    blocks = [tuple(r["input_ids"]) for r in one_file]

    def take(stream, count):
        return [tuple(r["input_ids"]) for r in itertools.islice(stream, count)]

    plain = take(training_stream(one_file, shuffle_buffer=0), 2 * len(blocks) + 3)
    assert plain == blocks + blocks + blocks[:3]  # repeated without end, in order without a buffer
    shuffled = take(training_stream(one_file, seed=1, shuffle_buffer=20), 40)
    assert shuffled == take(training_stream(one_file, seed=1, shuffle_buffer=20), 40)
    assert shuffled != take(training_stream(one_file, seed=2, shuffle_buffer=20), 40) and shuffled != blocks[:40]
    # One shard (file): each of 2 processes keeps every other block of the same shuffled stream, so per step they
    # see together what one process with twice the batch sees.
    ranks = [take(training_stream(one_file, seed=1, shuffle_buffer=20, rank=r, world_size=2), 20) for r in (0, 1)]
    assert ranks[0] == shuffled[0::2] and ranks[1] == shuffled[1::2]
    # Two shards on two processes: each reads its own file.
    files = [str(_jsonl(tmp_path / f"part{i}.jsonl", 30, seed=i)) for i in (1, 2)]
    two_files = pack_dataset(load_text_corpus(str(tmp_path / "part*.jsonl"), streaming=True)["train"], tokenizer, 16)
    per_file = [{tuple(r["input_ids"]) for r in pack_dataset(
        load_text_corpus(f, streaming=True)["train"], tokenizer, 16)} for f in files]
    for rank in (0, 1):
        mine = set(take(training_stream(two_files, shuffle_buffer=0, rank=rank, world_size=2), 10))
        assert sum(mine <= blocks_of_file for blocks_of_file in per_file) == 1, rank
