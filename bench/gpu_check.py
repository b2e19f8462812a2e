"""GPU paths on a CUDA machine: training with bf16-mixed, channels_last, torch.compile, and inference
throughput of edh's ResNet-50 against timm's at fp32 and bf16.

    python bench/gpu_check.py [--out DIR]

Prints one line per check; exits non-zero if a check fails. Not part of CI (CI has no GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch


def timed(step, repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def check_inference() -> None:
    import timm

    import edh
    from edh.utils.perf import prepare_for_inference

    batch = torch.randn(64, 3, 224, 224, device="cuda")
    torch.manual_seed(0)
    model = edh.build(encoder="resnet50", heads={"label": {"type": "classification", "num_classes": 1000}}).cuda().eval()
    torch.manual_seed(0)
    peer = timm.create_model("resnet50").cuda().eval()
    fast = prepare_for_inference(model, channels_last=True, fold_bn=True)
    cl = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        rates = {
            "timm fp32": 64 / timed(lambda: peer(batch)),
            "edh fp32 (channels_last, BN folded)": 64 / timed(lambda: fast(cl)),
        }
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rates["timm bf16"] = 64 / timed(lambda: peer(batch))
            rates["edh bf16 (channels_last, BN folded)"] = 64 / timed(lambda: fast(cl))
        compiled = torch.compile(fast)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_eager = fast(cl)["label"].float()
            out_compiled = compiled(cl)["label"].float()
            rates["edh bf16 + torch.compile"] = 64 / timed(lambda: compiled(cl))
    diff = (out_eager - out_compiled).abs().max().item()
    for name, rate in rates.items():
        print(f"  resnet50 b64 224x224 {name:<40} {rate:8.0f} img/s")
    print(f"  compile vs eager max abs diff (bf16 logits): {diff:.3g}")


def check_training(out: Path) -> None:
    from edh.workflows.evaluate import evaluate_run
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    spec = parse_run_spec({
        "model": {"encoder": {"name": "resnet18"}, "heads": {"label": {"type": "classification"}}},
        "data": {"name": "digits", "image_size": 32, "batch_size": 64},
        "train": {"epochs": 8, "lr": 0.002, "channels_last": True, "compile": True},
        "trainer": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "enable_progress_bar": False},
    })
    start = time.perf_counter()
    run = train_run(spec, out / "digits-gpu", force=True)
    seconds = time.perf_counter() - start
    acc = evaluate_run(run, "test", progress=False).metrics["label"]["acc"]
    print(f"  digits resnet18 on GPU, bf16-mixed + channels_last + compile: test acc {acc:.4f} in {seconds:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    failed = 0
    for name, check in (("inference", check_inference), ("training", lambda: check_training(Path(args.out)))):
        print(f"[{name}]", flush=True)
        try:
            check()
        except Exception:
            failed += 1
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
