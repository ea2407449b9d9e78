from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoders.text import ENCODE_VERSION, TextEncoder, mean_pool
from tests.encoders.conftest import SPECIAL, TEXTS, WORDS


def _unit_rows(x: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_mean_pool_exact_and_ignores_padding():
    hidden = torch.tensor([
        [[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],  # last position is padding
        [[1.0, 1.0], [2.0, 4.0], [6.0, 7.0]],
    ])  # [B=2, L=3, D=2]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [3.0, 4.0]]))


def test_bert_matches_hand_computation(tiny_bert_dir):
    from transformers import AutoTokenizer, BertModel

    enc = TextEncoder(tiny_bert_dir, show_progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = BertModel.from_pretrained(tiny_bert_dir).eval()
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])  # [1, L], no padding
    with torch.no_grad():
        hand = F.normalize(model(input_ids=ids).last_hidden_state.mean(dim=1), dim=-1).numpy()  # [1, 32]
    np.testing.assert_allclose(enc.encode([TEXTS[0]]), hand, atol=1e-6)
    # Next to a much longer text the short one is padded; padding must not change its vector.
    np.testing.assert_allclose(enc.encode([TEXTS[0], TEXTS[5]])[:1], hand, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_clip_text_dir", "tiny_clip_dir"])
def test_batched_equals_one_at_a_time(fixture, request):
    enc = TextEncoder(request.getfixturevalue(fixture), batch_size=3, show_progress=False)
    batched = enc.encode(TEXTS)  # 8 texts of mixed lengths: 3 batches, reordered by length inside
    single = np.concatenate([enc.encode([t]) for t in TEXTS])
    assert batched.shape == (len(TEXTS), enc.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)
    _unit_rows(batched)
    assert not np.allclose(batched[0], batched[1])  # different texts, different vectors


def test_token_budget_batches(tiny_bert_dir):
    enc = TextEncoder(tiny_bert_dir, batch_size=4, max_batch_tokens=10, show_progress=False)
    lengths = [12, 5, 5, 3, 3, 3, 1]  # already longest first
    batches = [b.tolist() for b in enc._batches(np.arange(7), lengths)]
    assert batches == [[0], [1, 2], [3, 4, 5], [6]]  # 12 > 10 alone; 2 x 5; 3 x 3; then batch_size caps
    assert TextEncoder(tiny_bert_dir, show_progress=False).max_batch_tokens == 4096  # the CPU default
    unbounded = TextEncoder(tiny_bert_dir, batch_size=64, max_batch_tokens=0, show_progress=False)
    np.testing.assert_allclose(enc.encode(TEXTS), unbounded.encode(TEXTS), atol=1e-5)


def test_clip_uses_text_tower_and_projection(tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    enc = TextEncoder(tiny_clip_dir, show_progress=False)
    assert enc.dim == 16 and enc.pooling == "clip-eos+projection"
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    ids = torch.tensor([tok(TEXTS[3])["input_ids"]])
    with torch.no_grad():
        pooled = clip.text_model(input_ids=ids).pooler_output  # [1, 32], the [SEP] (end-of-text) state
        hand = F.normalize(clip.text_projection(pooled), dim=-1).numpy()  # [1, 16]
    np.testing.assert_allclose(enc.encode([TEXTS[3]]), hand, atol=1e-6)


def test_clip_text_only_config(tiny_clip_text_dir):
    enc = TextEncoder(tiny_clip_text_dir, show_progress=False)
    assert (enc.dim, enc.pooling, enc.max_length) == (16, "clip-eos+projection", 32)


def test_truncation_and_position_cap(tiny_bert_dir):
    enc = TextEncoder(tiny_bert_dir, max_length=8, show_progress=False)
    long = "the cat sat on the mat with a dog"  # 10 words + [CLS]/[SEP]: cut at 8 tokens
    a, b = enc.encode([long, long + " and a boy and a girl"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    capped = TextEncoder(tiny_bert_dir, max_length=256, show_progress=False)
    assert capped.max_length == 64  # the model has 64 positions
    assert capped.encode(["cat " * 200]).shape == (1, 32)


def test_repr_and_identity(tiny_bert_dir, tmp_path):
    enc = TextEncoder(tiny_bert_dir, max_length=16, show_progress=False)
    assert repr(enc) == "TextEncoder('tiny-bert', dim=32, max_length=16)"
    assert enc.identity.startswith("text:tiny-bert@") and enc.identity.endswith(":pool=mean:max_length=16")
    assert TextEncoder(tiny_bert_dir, max_length=16, show_progress=False).identity == enc.identity
    assert TextEncoder(tiny_bert_dir, max_length=12, show_progress=False).identity != enc.identity
    # A copy elsewhere is the same model; changed weights under the same name are not.
    copy = tmp_path / "a" / "tiny-bert"
    shutil.copytree(tiny_bert_dir, copy)
    assert TextEncoder(copy, max_length=16, show_progress=False).identity == enc.identity
    # in a folder of another name, the directory's identity names it, but the cache finds the original's vectors
    renamed = tmp_path / "b" / "my-model"
    shutil.copytree(tiny_bert_dir, renamed)
    other = TextEncoder(renamed, max_length=16, show_progress=False)
    assert other.identity.startswith("text:my-model@") and other.cache_identity == enc.cache_identity
    assert enc.cache_identity == enc.identity.replace("text:tiny-bert@", "text:@") + f":encode={ENCODE_VERSION}"
    from transformers import BertModel

    model = BertModel.from_pretrained(copy)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[7, 0] += 1.0
    model.save_pretrained(copy)
    changed = TextEncoder(copy, max_length=16, show_progress=False)
    assert changed.identity != enc.identity and changed.cache_identity != enc.cache_identity


def test_call_carries_columns_and_works_under_datasets_map(tiny_bert_dir):
    import datasets

    enc = TextEncoder(tiny_bert_dir, batch_size=2, show_progress=False)
    expected = enc.encode(TEXTS)
    batch = {"item_id": np.arange(100, 108), "text": np.array(TEXTS, dtype=object), "genre": ["g"] * 8}
    out = enc(batch)
    assert set(out) == {"item_id", "text", "genre", "embedding"}
    assert out["item_id"] is batch["item_id"] and out["genre"] is batch["genre"]
    assert out["embedding"].dtype == np.float32
    np.testing.assert_allclose(out["embedding"], expected, atol=1e-6)

    ds = datasets.Dataset.from_dict({"item_id": [f"m{i}" for i in range(8)], "text": TEXTS, "year": list(range(8))})
    mapped = ds.map(enc, batched=True, batch_size=3)
    assert mapped["item_id"] == [f"m{i}" for i in range(8)] and mapped["year"] == list(range(8))
    np.testing.assert_allclose(np.array(mapped["embedding"], dtype=np.float32), expected, atol=1e-5)


def test_errors_name_the_problem(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'sentence-transformers/all-mpnet-base-v2' is not a local directory.*allow_download=True"):
        TextEncoder("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(ValueError, match=r"no config.json"):
        TextEncoder(tmp_path)
    enc = TextEncoder(tiny_bert_dir, show_progress=False)
    with pytest.raises(TypeError, match="single string"):
        enc.encode("the cat")
    with pytest.raises(TypeError, match=r"text 1 is not a string \(got NoneType"):
        enc.encode(["the cat", None])
    with pytest.raises(ValueError, match=r"no 'text' column \(columns: \['item_id', 'title'\]\)"):
        enc({"item_id": [1], "title": ["x"]})
    assert enc.encode([]).shape == (0, 32)


MOVIES = [
    "A hard-boiled detective investigates a string of murders in rain-soaked Los Angeles.",
    "A secret agent races across Europe to stop a stolen nuclear warhead.",
    "Two strangers fall in love during one long night walking through Vienna.",
    "A hand-drawn animated feature in which talking toys come to life when their owner leaves the room.",
    "A documentary that follows farmers through a year of drought in the Midwest.",
    "An astronaut stranded on Mars must grow his own food to survive until rescue.",
]


def test_packaged_minilm_ranks_the_animated_film_first():
    enc = TextEncoder(show_progress=False)
    assert repr(enc) == "TextEncoder('all-MiniLM-L6-v2', dim=384, max_length=256)"
    assert enc.identity.startswith("text:all-MiniLM-L6-v2@")
    docs = enc.encode(MOVIES)
    _unit_rows(docs)
    query = enc.encode(["a cartoon for kids with animation"])[0]
    scores = docs @ query
    assert int(np.argmax(scores)) == 3, scores
    np.testing.assert_allclose(enc.encode(MOVIES), docs, atol=0)  # deterministic


def test_an_empty_text_with_a_tokenizer_that_adds_no_special_tokens_still_gets_a_unit_vector(tmp_path):
    import json

    from transformers import GPT2Config, GPT2Model, GPT2Tokenizer

    # GPT-2's tokenizer gives "" no token at all: it pooled to a zero vector, or a batch of only
    # empty texts failed; the end-of-text token stands in for it.
    chars = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(chars), n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    enc = TextEncoder(tmp_path, show_progress=False)
    mixed, alone = enc.encode(["abc", ""]), enc.encode(["", ""])
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(alone, np.stack([mixed[1], mixed[1]]), atol=1e-6)  # the same vector, batch or not
    eos = enc.encode(["<|endoftext|>"])
    np.testing.assert_allclose(mixed[1:], eos, atol=1e-6)


def test_a_single_batch_shows_no_progress_bar(tiny_bert_dir, capfd):
    enc = TextEncoder(tiny_bert_dir, batch_size=2, show_progress=True)
    enc.encode(["one query"])
    assert "encoding text" not in capfd.readouterr().err  # a search's query: one step, no bar
    enc.encode(["a", "b", "c", "d", "e"])
    assert "encoding text" in capfd.readouterr().err


def test_a_model_saved_without_its_tokenizer_is_refused(tiny_bert_dir, tmp_path):
    # transformers builds a 5-token tokenizer for it: every word was [UNK] and every text one vector
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / f, bare / f)
    with pytest.raises(ValueError, match=r"bare has no tokenizer files \(tokenizer.json, vocab.txt, vocab.json, "
                                         r"\.\.\.\): save the model's tokenizer beside it"):
        TextEncoder(bare, show_progress=False)
    (bare / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # special tokens alone
    with pytest.raises(ValueError, match=rf"its tokenizer knows 5 tokens where the model has {len(SPECIAL + WORDS)}: "
                                         r"every text would read as unknown words"):
        TextEncoder(bare, show_progress=False)


def _with_pooling(src, dst, **modes):
    import json

    shutil.copytree(src, dst)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{k}": v for k, v in modes.items()}))
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return dst


def test_sentence_transformers_pooling_is_followed_and_kept_by_a_saved_copy(tiny_bert_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    # CLS pooling (BGE's) was read as mean pooling: the same vectors, the same identity
    cls_dir = _with_pooling(tiny_bert_dir, tmp_path / "cls", cls_token=True, mean_tokens=False)
    max_dir = _with_pooling(tiny_bert_dir, tmp_path / "max", max_tokens=True)
    sqrt_dir = _with_pooling(tiny_bert_dir, tmp_path / "sqrt", mean_sqrt_len_tokens=True)
    tok, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():
        hidden = model(**tok(TEXTS[:4], padding=True, return_tensors="pt")).last_hidden_state
    mask = tok(TEXTS[:4], padding=True, return_tensors="pt")["attention_mask"]
    expected = {
        "cls": F.normalize(hidden[:, 0], dim=-1),
        "max": F.normalize(hidden.masked_fill(mask[..., None] == 0, -1e9).amax(dim=1), dim=-1),
        "mean": F.normalize(mean_pool(hidden, mask), dim=-1),
    }
    for directory, pool in ((cls_dir, "cls"), (max_dir, "max"), (sqrt_dir, "mean"), (tiny_bert_dir, "mean")):
        enc = TextEncoder(directory, show_progress=False)
        assert enc.pooling == pool and enc.identity.endswith(f":pool={pool}:max_length=64")
        np.testing.assert_allclose(enc.encode(TEXTS[:4]), expected[pool].numpy(), atol=1e-5)
    saved = tmp_path / "saved"
    TextEncoder(cls_dir, show_progress=False).save(saved)  # a fine-tuned copy pools as its source did
    assert TextEncoder(saved, show_progress=False).pooling == "cls"
    odd = _with_pooling(tiny_bert_dir, tmp_path / "odd", cls_token=True, mean_tokens=True)
    with pytest.raises(ValueError, match=r"sentence-transformers pooling cls_token \+ mean_tokens is not supported"):
        TextEncoder(odd, show_progress=False)
    # sentence-transformers 5+ writes {"pooling_mode": "cls"}: it was read as mean
    import json

    for mode, pool in (("cls", "cls"), (["max"], "max"), ("mean_sqrt_len_tokens", "mean")):
        (cls_dir / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": mode}))
        assert TextEncoder(cls_dir, show_progress=False).pooling == pool
    for mode, said in (("lasttoken", "lasttoken"), (["cls", "mean"], "cls \\+ mean")):
        (cls_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": mode}))
        with pytest.raises(ValueError, match=rf"sentence-transformers pooling {said} is not supported"):
            TextEncoder(cls_dir, show_progress=False)


def test_long_texts_are_counted_when_cut_and_roberta_positions_leave_room_for_the_offset(tiny_bert_dir, tmp_path,
                                                                                       caplog):
    enc = TextEncoder(tiny_bert_dir, max_length=8, show_progress=False)
    with caplog.at_level("INFO", logger="encoders.text"):
        enc.encode(["the cat sat on the mat with a dog", "a dog", "the cat sat on the mat"])  # 11, 4 and 8 tokens
    # (the text of exactly 8 tokens lost nothing: it was counted as cut)
    assert "tiny-bert: 1 of 3 texts were longer than the 8-token limit and were cut there (max_length)" in caplog.text
    from transformers import RobertaConfig, RobertaModel

    roberta = tmp_path / "roberta"  # 514 positions hold 512 tokens: --max-length 514 crashed (index 514 out of bounds)
    shutil.copytree(tiny_bert_dir, roberta, ignore=shutil.ignore_patterns("config.json", "model.safetensors"))
    RobertaModel(RobertaConfig(vocab_size=len(SPECIAL + WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=34, pad_token_id=0)).save_pretrained(roberta)
    enc = TextEncoder(roberta, max_length=34, show_progress=False)
    assert enc.max_length == 33  # positions from padding_idx + 1 = 1
    assert enc.encode(["cat " * 100]).shape == (1, 32)
