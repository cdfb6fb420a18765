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
