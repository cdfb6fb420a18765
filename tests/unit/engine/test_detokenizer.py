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


def test_tokenizer_import_waits_for_other_transformers_imports():
    """Two models loading on two threads: their first imports of a transformers name, taken at
    once, can fail ("cannot import name 'AutoTokenizer'"), so load_tokenizer imports under the
    lock that the Accelerate engine's import takes too."""
    import threading

    from shardserve.assets import default_model_path
    from shardserve.engine.tokenizer import load_tokenizer
    from shardserve.hf_imports import TRANSFORMERS_IMPORT

    loaded = []
    loader = threading.Thread(target=lambda: loaded.append(load_tokenizer(str(default_model_path()))))
    with TRANSFORMERS_IMPORT:
        loader.start()
        loader.join(timeout=2.0)
        assert loader.is_alive() and not loaded  # waiting for the lock
    loader.join(timeout=60)
    assert len(loaded) == 1


def test_an_aborted_request_keeps_the_half_character_its_last_token_began(tiny_checkpoint):
    """The detokeniser holds back a token that ends in half a UTF-8 character; when the request
    ends without another token (aborted), its output still has that token's text."""
    from transformers import AutoTokenizer

    from helpers.output_feed import feed
    from shardserve.engine.request import FinishReason, OutputKind
    from shardserve.engine.sampling_params import SamplingParams

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint("llama")))
    ids = tok.encode("ab 日本語", add_special_tokens=False)
    # The first prefix whose incremental text is held back: it ends inside a character.
    cut = next(n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd"))
    params = SamplingParams(max_new_tokens=64)
    *_, streamed, final = feed(tok, OutputKind.CUMULATIVE, ids[:cut], params, abort=True)
    assert not streamed.finished and final.finish_reason == FinishReason.ABORT
    assert streamed.text == tok.decode(ids[:cut]).removesuffix("\ufffd")  # held back while running
    assert final.text == tok.decode(ids[:cut]) and final.token_text_ends[-1] == len(final.text)
