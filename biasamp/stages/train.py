"""Fine-tuning one generation with transformers' Trainer, configured as the authors did."""

from __future__ import annotations

import tempfile
from typing import Callable

import datasets
import pandas as pd
import torch
from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

from biasamp.config import TrainConfig
from biasamp.text import training_text


def tokenized(tokenizer, texts: list[str], max_length: int) -> datasets.Dataset:
    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )


def training_arguments(
    cfg: TrainConfig,
    seed: int,
    output_dir: str,
    deepspeed: dict | None = None,
    micro_batch: int | None = None,
    accumulation: int = 1,
) -> TrainingArguments:
    """The authors' Trainer settings. With `deepspeed`, one of N workers: micro_batch x accumulation x N
    is cfg.batch_size, and the optimizer (Trainer's AdamW) and schedule are the same objects as in the
    single-process run, so the hyper-parameters mean the same at any scale. (Under ZeRO-3, made before
    the model is loaded, they make `from_pretrained` load each worker's shard only.)"""
    return TrainingArguments(
        output_dir=output_dir,  # nothing is saved there by the Trainer: checkpoints are written by the caller
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=micro_batch or cfg.batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        deepspeed=deepspeed,
        bf16=bool(deepspeed) and cfg.deepspeed.precision == "bf16",
        fp16=bool(deepspeed) and cfg.deepspeed.precision == "fp16",
    )


def make_trainer(model, tokenizer, ds, args: TrainingArguments) -> Trainer:
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        # Padding is masked out of the loss (pad = EOS for GPT-2, as in the authors' code).
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
    )
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
    return trainer


def train_metrics(trainer: Trainer, result, ds, cfg: TrainConfig) -> dict:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": float(result.training_loss),
        "train_loss_last": float(losses[-1]) if losses else float("nan"),
        "train_steps": int(result.global_step),
        "train_articles": len(ds),
        "train_tokens": int(sum(len(x) for x in ds["input_ids"])) * cfg.epochs,
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
        "loss_curve": [float(x) for x in losses],  # per optimizer step
    }


# train.backend -> who fine-tunes. "plain" is this process; a scale-out backend registers its own with
# the same signature when imported (biasamp.backends.deepspeed_train: "deepspeed"), so the stages
# never import the backends.
TRAINERS: dict[str, Callable] = {}


def register_trainer(kind: str):
    def add(fn):
        TRAINERS[kind] = fn
        return fn

    return add


def trainer_for(kind: str) -> Callable:
    if kind not in TRAINERS:
        raise ValueError(
            f"train.backend: '{kind}' is not registered in this process (the Ray layer imports "
            f"biasamp.backends, which registers it); registered: {', '.join(TRAINERS)}"
        )
    return TRAINERS[kind]


@register_trainer("plain")
def fine_tune(model, tokenizer, articles: pd.DataFrame, cfg: TrainConfig, seed: int, workdir=None) -> dict:
    """Fine-tune `model` in place on `articles` (title, text) in this process. Returns loss metrics
    and the loss curve."""
    texts = [training_text(t, b) for t, b in zip(articles["title"], articles["text"])]
    ds = tokenized(tokenizer, texts, cfg.max_length)
    with tempfile.TemporaryDirectory(prefix="biasamp-train-") as tmp:
        trainer = make_trainer(model, tokenizer, ds, training_arguments(cfg, seed, tmp))
        result = trainer.train()
    model.eval()
    return train_metrics(trainer, result, ds, cfg)
