"""TRL's SFTTrainer on rows another script prepared: the peer run of sft_trl_parity.py. Run by the
python of TRL's own venv (it imports only torch, transformers, datasets and trl, never the
project), with the exported model folder (its tokenizer's chat template renders the records), a
JSON file of conversations already in the order to train on ({"messages": [...]} each) and the
hyperparameters.

Writes --out: every optimizer step's loss as computed (not the rounded logged value), the LR of
each step, the library versions and the trainer's own runtime figures."""

from __future__ import annotations

import argparse
import json
import time

import datasets
import torch
import transformers
import trl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("model", "data", "out", "workdir"):
        ap.add_argument(f"--{name}", required=True)
    for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "clip"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, required=True)
    ap.add_argument(
        "--freeze-biases",
        action="store_true",
        help="keep every bias at its exported zero: GPT-2's layout always has biases, a bias-free model has none to train",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.data) as f:
        rows = json.load(f)
    losses: list[float] = []
    lrs: list[float] = []

    class Recorded(trl.SFTTrainer):
        """Keeps each micro-batch's loss exactly (one micro-batch per step here)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append((loss[0] if return_outputs else loss).detach().double().item())
                lrs.append(self.optimizer.param_groups[0]["lr"])
            return loss

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    frozen = [n for n, p in model.named_parameters() if args.freeze_biases and n.endswith(".bias")]
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    config = trl.SFTConfig(
        output_dir=args.workdir,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": args.min_lr},
        warmup_steps=0,
        weight_decay=args.weight_decay,
        adam_beta1=args.beta1,
        adam_beta2=args.beta2,
        adam_epsilon=1e-8,
        max_grad_norm=args.clip,
        optim="adamw_torch_fused",
        train_sampling_strategy="sequential",
        assistant_only_loss=True,
        packing=False,
        max_length=args.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Recorded(
        model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    t = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t
    with open(args.out, "w") as f:
        json.dump(
            {
                "losses": losses,
                "frozen": frozen,
                "lrs": lrs,
                "seconds": seconds,
                "train_runtime": result.metrics.get("train_runtime"),
                "versions": {
                    "trl": trl.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "datasets": datasets.__version__,
                },
            },
            f,
        )


if __name__ == "__main__":
    main()
