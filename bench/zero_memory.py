"""GPU memory for the model states of each study model under DeepSpeed ZeRO-2 (bf16, AdamW, no
offload), from DeepSpeed's own estimator and parameter counts of the models' architectures
(instantiated on the meta device: no download, no memory). Activations come on top: at
micro-batch 1 x 512 tokens with gradient checkpointing off they add roughly 1-3 GB at these sizes.

    python bench/zero_memory.py
"""

import torch
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

# Architectures as published in each model's config.json on the Hugging Face hub.
MODELS = {
    "gpt2 (paper)": GPT2Config(),
    "SmolLM2-135M (quickstart)": LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "Qwen2.5-0.5B": Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "Llama-3.2-1B": LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "Qwen2.5-1.5B": Qwen2Config(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


def main():
    print(f"{'model':28}{'params':>8}{'FFN neurons':>13}" + "".join(f"{f'{n} GPU':>9}" for n in (1, 2, 4, 8)))
    for name, config in MODELS.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        width = getattr(config, "hidden_size", None) or config.n_embd
        per_gpu = [
            estimate_zero2_model_states_mem_needs(params, n, 1, cpu_offload=False)[1] / 2**30 for n in (1, 2, 4, 8)
        ]
        print(f"{name:28}{params / 1e9:7.2f}B{layers * width:13,}" + "".join(f"{g:8.1f}G" for g in per_gpu))


if __name__ == "__main__":
    main()
