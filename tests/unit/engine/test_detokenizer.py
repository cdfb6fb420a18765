from shardserve.engine.tokenizer import IncrementalDetokenizer


def test_incremental_text_equals_full_decode_and_never_splits_utf8(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint("llama")))
    text = "naïve café — 日本語 emoji 🎉 done"
    prompt = tok.encode("prefix:")
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.add(t) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)
    # A byte-level BPE with a 512 vocab splits these characters over several tokens.
    assert sum(1 for d in deltas if d == "") > 0
