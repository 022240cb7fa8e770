"""GPU throughput (run when a GPU is lent): tokens/s and model FLOPs utilisation of one training
step in bf16 for a Flan-T5-Large-shaped and a 1B LLaMA-shaped randomly initialised model, with the
KPOD weighted loss versus the plain loss. Needs CUDA; nothing is downloaded.

    KPOD_DATA_DIR=../shared/data python bench/gpu_throughput.py [--peak-tflops 989]
"""

import argparse
import time

import torch
from common import shaped_config  # bench/common.py: bench/ is on sys.path when a bench runs
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from kpod.student.trainer import shift_right, weighted_token_loss


def models():
    for shape in ("flan-t5-large", "llama-1b"):
        config = shaped_config(shape)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        yield f"{shape} shape", cls.from_config(config)


def step(model, batch, kpod: bool) -> torch.Tensor:
    labels = batch["labels"]
    if model.config.is_encoder_decoder:
        if not kpod:
            return model(input_ids=batch["input_ids"], labels=labels).loss
        logits = model(input_ids=batch["input_ids"], decoder_input_ids=shift_right(labels, 0, 0)).logits
        return weighted_token_loss(logits, labels, batch["weights"])
    if not kpod:
        return model(input_ids=batch["input_ids"], labels=labels).loss
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    return weighted_token_loss(logits, labels[:, 1:], batch["weights"][:, 1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM 989, H200 989)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    device = "cuda"
    for name, model in models():
        model = model.to(device, torch.bfloat16).train()
        params = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ids = torch.randint(5, 30000, (args.batch, args.length), device=device)
        batch = {"input_ids": ids, "labels": ids.clone(), "weights": torch.rand(ids.shape, device=device) * 2}
        for kpod in (False, True):
            for i in range(args.steps + 3):
                if i == 3:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                loss = step(model, batch, kpod)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.steps
            tokens = args.batch * args.length * (2 if model.config.is_encoder_decoder else 1)
            mfu = 6 * params * args.batch * args.length / seconds / (args.peak_tflops * 1e12)
            print(
                f"{name:<20} {'kpod' if kpod else 'plain':<6} {tokens / seconds:>10.0f} tokens/s  MFU {100 * mfu:5.1f}%  "
                f"peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
            )
        del model, optimizer
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
