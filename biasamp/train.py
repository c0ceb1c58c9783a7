"""Fine-tuning one generation with transformers' Trainer, configured as the authors did."""

from __future__ import annotations

import datasets
import pandas as pd
import torch
import tempfile

from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

from biasamp.config import TrainConfig


def training_text(title: str, body: str) -> str:
    return f"title: {title}\nbody: {body}"  # the authors' article format


def fine_tune(model, tokenizer, articles: pd.DataFrame, cfg: TrainConfig, seed: int) -> dict:
    """Fine-tune `model` in place on `articles` (title, text). Returns loss metrics."""
    texts = [training_text(t, b) for t, b in zip(articles["title"], articles["text"])]
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=cfg.max_length),
        batched=True,
        remove_columns=["text"],
    )
    workdir = tempfile.TemporaryDirectory(prefix="biasamp-train-")
    args = TrainingArguments(
        output_dir=workdir.name,  # nothing is saved there: checkpoints are written by the caller
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        # Padding is masked out of the loss (pad = EOS for GPT-2, as in the authors' code).
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
    )
    trainer.remove_callback(PrinterCallback)  # the loss curve is returned, not printed
    result = trainer.train()
    workdir.cleanup()
    model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": float(result.training_loss),
        "train_loss_last": float(losses[-1]) if losses else float("nan"),
        "train_steps": int(result.global_step),
        "train_articles": len(texts),
        "train_tokens": int(sum(len(x) for x in ds["input_ids"])) * cfg.epochs,
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
    }
