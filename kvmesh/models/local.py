"""Build HuggingFace model directories locally: nothing is ever downloaded.

`build_model(dir, shape)` writes a Llama model with seeded random weights
(transformers `save_pretrained`) and a byte-level BPE tokenizer trained here
on generated text (`PreTrainedTokenizerFast`), so that both
`AutoTokenizer.from_pretrained(dir)` and `vllm.LLM(model=dir)` work offline.

The same shape and seed give the same weights and tokenizer in every process.
The directory is written under a temporary name and renamed into place, with
a marker file written last, so a half-built model is never mistaken for a
complete one and concurrent builders of the same directory do not collide.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from kvmesh.models.shapes import ModelShape, get_shape

MARKER = "kvmesh-model.json"
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")  # ids 0, 1, 2
_SYLLABLES = ("ka", "to", "mi", "ren", "sho", "lu", "de", "qua", "bri", "on", "es",
              "tha", "vi", "gor", "pel", "nu", "an", "ix", "or", "ste")


def build_model(out_dir: Path, shape: ModelShape | str = "tiny", seed: int = 0) -> Path:
    """Write a complete model directory for `shape` at `out_dir` and return it.

    Idempotent: returns at once when `out_dir` already holds this shape and
    seed. Raises ValueError when `out_dir` holds anything else (another shape,
    or files that are not a kvmesh model): it never deletes what it did not
    write. Takes ~10 s for "tiny"; it may block for as long as that.
    """
    spec = get_shape(shape)
    out_dir = Path(out_dir)
    wanted = _marker_content(spec, seed)
    if _is_complete(out_dir, wanted):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and is not a kvmesh {spec.name!r} "
                         f"model (seed {seed}); pick another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_tokenizer(tmp, spec, seed)
        _write_weights(tmp, spec, seed)
        (tmp / MARKER).write_text(json.dumps(wanted, sort_keys=True))
        _move_into_place(tmp, out_dir, wanted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def llama_config(spec: ModelShape):
    """The transformers `LlamaConfig` for a shape."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        dtype=spec.dtype, architectures=["LlamaForCausalLM"],
    )


def sample_text(num_words: int, seed: int = 0) -> str:
    """Deterministic pseudo-English: made-up words, punctuation, digits."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(2000)]
    out = []
    for i in range(num_words):
        word = rng.choice(words) if rng.random() > 0.05 else str(rng.randint(0, 9999))
        out.append(word.capitalize() if i % 12 == 0 else word)
        if i % 12 == 11:
            out[-1] += rng.choice(".!?,;")
    return " ".join(out)


def _write_tokenizer(out_dir: Path, spec: ModelShape, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = sample_text(40_000, seed)
    tok.train_from_iterator((corpus[i:i + 4096] for i in range(0, len(corpus), 4096)),
                            trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2], model_max_length=spec.max_position_embeddings)
    fast.save_pretrained(out_dir)


def _write_weights(out_dir: Path, spec: ModelShape, seed: int) -> None:
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(spec)).to(getattr(torch, spec.dtype))
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1,
                                               pad_token_id=2, do_sample=False)
    model.save_pretrained(out_dir)


def _marker_content(spec: ModelShape, seed: int) -> dict:
    fields = {name: getattr(spec, name) for name in spec.__slots__}
    return {"shape": fields, "seed": seed, "format": 1}


def _is_complete(out_dir: Path, wanted: dict) -> bool:
    try:
        return json.loads((out_dir / MARKER).read_text()) == wanted
    except (OSError, ValueError):
        return False


def _move_into_place(tmp: Path, out_dir: Path, wanted: dict) -> None:
    """Rename `tmp` to `out_dir`, unless a concurrent builder got there first."""
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        tmp.rename(out_dir)
    except OSError:
        if not _is_complete(out_dir, wanted):
            raise
