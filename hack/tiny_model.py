"""Writes a tiny random Llama model that real vLLM (CPU build) can load offline, for the e2e tier.

Run with the Ray/vLLM venv's python (hack/ray-env.sh), not the operator venv:

    "$(hack/ray-env.sh | tail -1)/bin/python" hack/tiny_model.py /tmp/tiny-llama

The weights are random (fixed seed): the engine answers gibberish, which is all the tests need —
the process loads a model, serves /health, /v1/models and /v1/completions. Sizes are chosen for
vLLM's CPU backend: its attention kernels reject head_dim 16, so 128 hidden / 2 heads = head_dim 64.
The result is well under 1 MB and is rewritten identically on each run (byte-identical weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny language model for tests.",
    "Ray runs the job and vLLM serves the model on the CPU.",
    "Kubernetes operators reconcile the desired state with the observed state.",
    "One two three four five six seven eight nine ten.",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) [ ] { } - _ + = * / \\ | @ # $ % ^ & ~ `",
]
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# A minimal template so /v1/chat/completions works too; transformers 5 no longer has a default one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE: every input encodes (no <unk> surprises in prompts the tests send).
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out)
    return int(tok.get_vocab_size())


def build_model(out: Path, vocab_size: int, bos_id: int, eos_id: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )
    # Initialised in float32 (deterministic across machines), stored as bfloat16 to stay under
    # 1 MB; vLLM's CPU backend serves bfloat16 (or casts with --dtype).
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="directory to write (created; existing files overwritten)")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    vocab_size = build_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    build_model(out, vocab_size, vocab["<s>"], vocab["</s>"])

    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"tiny model: {out} ({size / 1024:.0f} KiB, vocab {vocab_size})", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
