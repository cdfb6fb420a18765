from shardserve import LLM, SamplingParams
from shardserve.cli import main


def test_generate_prints_the_greedy_continuation(tiny_checkpoint, capsys):
    path = str(tiny_checkpoint("llama"))
    assert main(["generate", "--model", path, "--prompt", "the cat", "--temperature", "0",
                 "--max-new-tokens", "6", "--min-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    with LLM(path, dtype="fp32") as llm:
        expected = llm.generate(["the cat"], SamplingParams(max_new_tokens=6, min_new_tokens=6, temperature=0.0))[0]
    assert out.startswith("the cat" + expected.text)
    assert "[length, 6 tokens]" in out


def test_generate_names_the_missing_file(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_generate_rejects_a_bad_parameter(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint("llama")), "--prompt", "x", "--top-p", "2"]) == 2
    assert "top_p must be a number in (0, 1]" in capsys.readouterr().err


def test_left_out_sampling_options_take_the_model_generation_config(tiny_checkpoint, tmp_path, capsys):
    """temperature 0 in generation_config.json: greedy without --temperature; the flag wins."""
    import json
    import shutil

    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("llama"), path)
    (path / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "do_sample": True}))
    runs = {}
    for flags in ([], ["--temperature", "1.5", "--seed", "3"]):
        assert main(["generate", "--model", str(path), "--prompt", "the cat", "--max-new-tokens", "12",
                     "--min-new-tokens", "12", "--no-stream", *flags]) == 0
        runs[bool(flags)] = capsys.readouterr().out
    with LLM(str(path), dtype="fp32") as llm:
        greedy = llm.generate(["the cat"], SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=0.0))[0]
    assert runs[False].startswith("the cat" + greedy.text + "\n")
    assert not runs[True].startswith("the cat" + greedy.text + "\n")
    (path / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "max_new_tokens": 5}))
    assert main(["generate", "--model", str(path), "--prompt", "the cat", "--min-new-tokens", "5"]) == 0
    assert "[length, 5 tokens]" in capsys.readouterr().out  # the model's limit, where none is given
    (path / "generation_config.json").write_text(json.dumps({"top_p": 7}))
    assert main(["generate", "--model", str(path), "--prompt", "x"]) == 2
    assert "generation_config.json: top_p must be a number in (0, 1]" in capsys.readouterr().err
