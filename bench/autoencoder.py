"""Test PSNR / SSIM reached and time taken by the autoencoder configs on digits, as `edh train` runs them.

    python bench/autoencoder.py [--only autoencoder vae] [--out runs/bench]

Target (issue 3): an autoencoder on digits reaches test PSNR >= 22 dB in <= 2 minutes here. PSNR is
computed by torchmetrics on pixels in [0, 1] from the mean squared error over every test pixel.
Like bench/segmentation_accuracy.py, each row also gives this process's CPU seconds / 2 cores and
the cores other processes used meanwhile. Writes bench/results/autoencoder.json.
"""

from __future__ import annotations

from pathlib import Path

import torch
from training import accuracy_parser, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CASES = {  # name: (config, target PSNR dB, budget seconds)
    "autoencoder": ("autoencoder-digits.yaml", 22.0, 120),
    "vae": ("vae-digits.yaml", None, None),
}


def run_case(name: str, out: Path) -> dict:
    config, target, budget = CASES[name]
    run, times = timed_train(load_config(config), out / name)
    test = evaluate_run(run, "test", progress=False).metrics["decoder"]
    met = None if target is None else test["psnr"] >= target and times["seconds"] <= budget
    return {"case": name, "config": f"configs/{config}", "test_psnr_db": round(test["psnr"], 2),
            "test_ssim": round(test["ssim"], 4), **times, "target_psnr_db": target, "budget_s": budget,
            "threads": torch.get_num_threads(), "met": met}


def main() -> None:
    args = parse_and_apply(accuracy_parser(__doc__.splitlines()[0], sorted(CASES), sorted(CASES)))
    rows = [run_case(name, Path(args.out)) for name in args.only]
    print(f"{'case':<12} {'PSNR dB':>7} {'SSIM':>6} {'target':>6} {'wall s':>7} {'cpu/2 s':>7} {'others':>6}  met")
    for r in rows:
        target = "" if r["target_psnr_db"] is None else f"{r['target_psnr_db']:.0f}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['case']:<12} {r['test_psnr_db']:>7.2f} {r['test_ssim']:>6.3f} {target:>6} {r['seconds']:>7.1f} "
              f"{r['alone_on_2_cores_s']:>7.1f} {r['others_cores']:>6.2f}  {met}")
    write_rows("autoencoder", rows)


if __name__ == "__main__":
    main()
