"""``F.linear`` against `edh.layers.packed.linear` (oneDNN, weights packed once) at the shapes of a decoding step.

    python bench/packed_linear.py [--repeats N] [--threads T]

Rows x in_features by in_features x out_features products of the translation benchmark's model
(d_model 256, FFN 1024, vocabulary 8,000) at batch 8 (greedy) and 32 (4 beams), fp32, under
``torch.inference_mode``; both contenders of a shape run round-robin (`common.measure`). Prints
microseconds per call and the ratio; writes bench/results/packed_linear.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import (Contender, apply_threads, base_parser, environment, format_ratio, measure, print_table, ratio,
                    summarize, write_json)

from edh.layers import packed

SHAPES = [(8, 256, 768), (8, 256, 1024), (8, 1024, 256), (8, 256, 8000), (32, 256, 768), (32, 256, 8000)]
CALLS = 200


def step(fn, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            for _ in range(CALLS):
                fn(x, weight, bias)
    return run


def main() -> None:
    args = base_parser(__doc__.splitlines()[0], repeats=7).parse_args()
    threads = apply_threads(args.threads)
    if not packed.available():
        raise SystemExit("this PyTorch build has no oneDNN linear ops: packed.linear falls back to F.linear")
    generator = torch.Generator().manual_seed(0)
    report = {"environment": environment(), "threads": threads, "shapes": {}, "ratios": []}
    for rows, fan_in, fan_out in SHAPES:
        x = torch.randn(rows, fan_in, generator=generator)
        weight, bias = torch.randn(fan_out, fan_in, generator=generator), torch.randn(fan_out, generator=generator)
        contenders = [Contender("F.linear", step(F.linear, x, weight, bias), CALLS),
                      Contender("packed.linear", step(packed.linear, x, weight, bias), CALLS)]
        summary = summarize(contenders, measure(contenders, 2 if args.quick else args.repeats, 1, 1,
                                                max_wait=args.max_wait))
        for r in summary:
            r["us_per_call"] = round(1e6 / r["items_per_s"], 1)
        name = f"{rows} x {fan_in} by {fan_in} x {fan_out}"
        print_table(summary, ["name", "us_per_call", "quiet_samples"], f"\n{name} ({threads} threads)")
        report["shapes"][name] = summary
        speedup = summary[1]["items_per_s"] / summary[0]["items_per_s"]
        report["ratios"].append(ratio(f"packed / F.linear, {name}", speedup))
    print("\nratios (medians)")
    print("\n".join(format_ratio(r) for r in report["ratios"]))
    print(f"\nwrote {write_json('packed_linear', report)}")


if __name__ == "__main__":
    main()
