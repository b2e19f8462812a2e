"""edh ResNet classifiers against timm and torchvision: forward and train-step images/s on CPU.

Run: ``python bench/classification.py [--repeats N] [--quick] [--threads T] [--max-wait S]
[--archs resnet18,resnet50]``.

Forward: batch 8, 224x224, eval, ``torch.inference_mode()``. Peers run as they come (contiguous), and
timm also in channels_last; edh runs as built, then as `edh.utils.perf.InferenceModel` does for ``edh
predict / eval`` with ``--fast`` (channels_last + BatchNorm folded), ``--bf16`` (bf16 autocast on
top), ``--compile`` (torch.compile with inductor's freezing pass, compiled before timing) and both;
also with bf16 weights and a bf16 input (`prepare_for_inference(dtype=torch.bfloat16)`; that row alone
gets the batch already in bf16). The peers also run under their own bf16: timm and torchvision
channels_last under bf16 autocast, and timm with bf16 weights (``model.to(torch.bfloat16)``, batch cast
to bf16 inside the step), each checked against its fp32 output first. ``pct_of_peak``: the median
forward's GFLOP/s (FLOPs from ``torch.utils.flop_counter``) as a % of this machine's matmul peak of
the row's precision (`common.matmul_peak_gflops`, fp32 or bf16). Every other contender gets the same contiguous fp32 batch and converts
it inside the timed step, as a real input pipeline would.
Train step: batch 16, 128x128, SGD (momentum 0.9) + cross-entropy, train mode, each model contiguous
and channels_last. All contenders of a group are timed round-robin (see `common.measure`), medians
reported; results also go to ``bench/results/classification.json``.
"""

from __future__ import annotations

import gc
from typing import Any

import timm
import torch
import torchvision
from common import (Contender, add_percent_of_peak, apply_threads, base_parser, bf16_target, check_bf16_agrees,
                    environment, format_ratio, forward_flops, forward_step, matmul_peak_gflops, measure, noisy_warning,
                    peaks_text, print_table, ratio, seed_everything, sgd_train_step, summarize, write_json)

import edh
from edh.utils.perf import InferenceModel, prepare_for_inference

NUM_CLASSES = 1000
FORWARD_BATCH, FORWARD_SIZE = 8, 224
TRAIN_BATCH, TRAIN_SIZE = 16, 128
FAST = "edh --fast (InferenceModel: CL + BN folded)"
BF16 = "edh --bf16 (--fast + bf16 autocast)"
COMPILED = "edh --compile (--fast + torch.compile, freezing)"
COMPILED_BF16 = "edh --compile --bf16"
TIMM_BF16, TIMM_BF16_WEIGHTS, TV_BF16 = ("timm channels_last + bf16 autocast", "timm channels_last, bf16 weights",
                                        "torchvision channels_last + bf16 autocast")
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]
FORWARD_COLUMNS = COLUMNS + ["pct_of_peak", "peak"]


def bf16_input_step(model: torch.nn.Module, images: torch.Tensor) -> Any:
    """A forward of a bf16-weight peer: the fp32 batch cast to bf16 channels_last inside the step."""
    def step() -> Any:
        with torch.inference_mode():
            return model(images.to(torch.bfloat16, memory_format=torch.channels_last))

    return step


def build(kind: str, arch: str) -> torch.nn.Module:
    """A fresh, seeded classifier: ``kind`` is ``edh``, ``timm`` or ``torchvision``."""
    seed_everything(0)
    if kind == "edh":
        return edh.build(encoder=arch, heads={"label": {"type": "classification", "num_classes": NUM_CLASSES}})
    if kind == "timm":
        return timm.create_model(arch, num_classes=NUM_CLASSES)
    return getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)


def forward_contenders(arch: str, images: torch.Tensor) -> list[Contender]:
    timm_model, tv_model, edh_model = (build(k, arch).eval() for k in ("timm", "torchvision", "edh"))
    timm_cl = build("timm", arch).eval().to(memory_format=torch.channels_last)
    tv_cl = build("torchvision", arch).eval().to(memory_format=torch.channels_last)
    timm_bf16_weights = build("timm", arch).eval().to(torch.bfloat16, memory_format=torch.channels_last)
    edh_cl = prepare_for_inference(edh_model, fold_bn=False)
    fast, fast_bf16 = InferenceModel(edh_model), InferenceModel(edh_model, bf16=True)
    compiled, compiled_bf16 = InferenceModel(edh_model, compile=True), InferenceModel(edh_model, bf16=True, compile=True)
    edh_bf16_weights = prepare_for_inference(edh_model, dtype=torch.bfloat16)
    with torch.inference_mode():  # check that the speed options keep the outputs (and compile before timing)
        reference = edh_model(images)["label"]
        errors = {name: (model(images)["label"] - reference).abs().max().item() for name, model in
                  (("--fast", fast), ("--bf16", fast_bf16), ("--compile", compiled), ("--compile --bf16", compiled_bf16))}
        timm_reference, tv_reference = timm_model(images), tv_model(images)
        peer_errors = {name: check_bf16_agrees(name, step(), fp32) for name, step, fp32 in (
            (TIMM_BF16, forward_step(timm_cl, images, True, bf16=True), timm_reference),
            (TIMM_BF16_WEIGHTS, bf16_input_step(timm_bf16_weights, images), timm_reference),
            (TV_BF16, forward_step(tv_cl, images, True, bf16=True), tv_reference))}
        errors["--bf16 (x std)"] = check_bf16_agrees(BF16, fast_bf16(images)["label"], reference)
    assert errors["--fast"] < 1e-3 and errors["--compile"] < 1e-3, f"prepared edh model differs from eager: {errors}"
    assert compiled.compiled and compiled_bf16.compiled, "torch.compile fell back to eager"
    print(f"{arch}: peers' bf16, max |diff| to their fp32 / std: "
          + ", ".join(f"{k} {v:.3f}" for k, v in peer_errors.items()), flush=True)
    print(f"{arch}: max |diff| to eager " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
          + f" (logits std {reference.std().item():.2f})", flush=True)
    n = images.shape[0]
    return [
        Contender("timm (default)", forward_step(timm_model, images), n, {"memory_format": "contiguous"}),
        Contender("timm channels_last", forward_step(timm_cl, images, True), n, {"memory_format": "channels_last"}),
        Contender("torchvision (default)", forward_step(tv_model, images), n, {"memory_format": "contiguous"}),
        Contender(TIMM_BF16, forward_step(timm_cl, images, True, bf16=True), n,
                  {"memory_format": "channels_last", "dtype": "bf16 autocast"}),
        Contender(TIMM_BF16_WEIGHTS, bf16_input_step(timm_bf16_weights, images), n,
                  {"memory_format": "channels_last", "dtype": "bf16 weights and input"}),
        Contender(TV_BF16, forward_step(tv_cl, images, True, bf16=True), n,
                  {"memory_format": "channels_last", "dtype": "bf16 autocast"}),
        Contender("edh eager (as built)", forward_step(edh_model, images), n, {"memory_format": "contiguous"}),
        Contender("edh channels_last, BN kept", forward_step(edh_cl, images, True), n,
                  {"memory_format": "channels_last"}),
        Contender(FAST, forward_step(fast, images), n, {"memory_format": "channels_last", "bn_folded": True}),
        Contender(BF16, forward_step(fast_bf16, images), n,
                  {"memory_format": "channels_last", "bn_folded": True, "dtype": "bf16 autocast"}),
        Contender("edh bf16 weights, bf16 input", forward_step(edh_bf16_weights, images.bfloat16(), True), n,
                  {"memory_format": "channels_last", "bn_folded": True, "dtype": "bf16 weights and input"}),
        Contender(COMPILED, forward_step(compiled, images), n,
                  {"memory_format": "channels_last", "bn_folded": True, "compile": "inductor, freezing"}),
        Contender(COMPILED_BF16, forward_step(compiled_bf16, images), n,
                  {"memory_format": "channels_last", "bn_folded": True, "compile": "inductor, freezing",
                   "dtype": "bf16 autocast"}),
    ]


def train_contenders(arch: str, images: torch.Tensor, labels: torch.Tensor) -> list[Contender]:
    contenders = []
    for kind in ("edh", "timm", "torchvision"):
        for channels_last in (False, True):
            name = f"{kind} {'channels_last' if channels_last else 'contiguous'}"
            step = sgd_train_step(kind, build(kind, arch), images, labels, "label", channels_last)
            contenders.append(Contender(name, step, images.shape[0], {"kind": kind}))
    return contenders


def ratios(forward_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The target ratios, from medians (and from best samples, for a noisy machine)."""
    out = []
    for key in ("items_per_s", "best_items_per_s"):
        forward = {r["name"]: r[key] for r in forward_rows}
        train = {r["name"]: (r[key], r["kind"]) for r in train_rows}
        best = lambda kinds: max((v, k) for k, (v, kind) in train.items() if kind in kinds)  # noqa: E731
        (edh_train, edh_name), (peer_train, peer_name) = best(("edh",)), best(("timm", "torchvision"))
        fast = forward[FAST]
        values = [
            ("edh --fast / timm default, forward", fast / forward["timm (default)"], 1.15),
            ("edh --fast / timm channels_last, forward", fast / forward["timm channels_last"], 1.0),
            (f"edh train ({edh_name}) / best peer ({peer_name})", edh_train / peer_train, 1.0),
            ("edh --bf16 / edh --fast (fp32), forward", forward[BF16] / fast, bf16_target(1.9)),
            ("edh --bf16 / timm channels_last + bf16 autocast, forward", forward[BF16] / forward[TIMM_BF16],
             bf16_target(1.3)),
            ("edh --bf16 / timm bf16 weights, forward", forward[BF16] / forward[TIMM_BF16_WEIGHTS], bf16_target(1.3)),
            ("edh --bf16 / torchvision bf16 autocast, forward", forward[BF16] / forward[TV_BF16], bf16_target(1.3)),
            ("edh bf16 weights, bf16 input / edh --fast (fp32), forward",
             forward["edh bf16 weights, bf16 input"] / fast, None),
            ("edh --compile / edh --fast, forward", forward[COMPILED] / fast, None),
            ("edh --compile --bf16 / edh --compile (fp32), forward", forward[COMPILED_BF16] / forward[COMPILED], None),
            ("edh --compile / timm channels_last, forward", forward[COMPILED] / forward["timm channels_last"], None),
            ("edh eager / timm default, forward (wrapper overhead)",
             forward["edh eager (as built)"] / forward["timm (default)"], None),
        ]
        if key == "items_per_s":
            out = [ratio(name, value, target) for name, value, target in values]
        else:  # the train names may differ between medians and best samples: match by position
            for r, (name, value, _) in zip(out, values):
                r["best"], r["best_name"] = value, name
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50", help="comma-separated ResNet names")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    repeats, forward_calls, train_calls = (2, 1, 1) if args.quick else (args.repeats, 2, 1)
    env = environment()
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    env["matmul_peak_gflops"] = peaks
    print(f"torch {env['torch']}, {threads} threads (torch.get_num_threads), {env['cpu']}; "
          f"{repeats} round-robin repeats, medians; flags {' '.join(env['cpu_flags'])}; oneDNN {env['onednn']}; "
          + peaks_text(peaks), flush=True)
    seed_everything(0)
    images = torch.randn(FORWARD_BATCH, 3, FORWARD_SIZE, FORWARD_SIZE)
    train_images = torch.randn(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE)
    train_labels = torch.randint(0, NUM_CLASSES, (TRAIN_BATCH,))
    report: dict[str, Any] = {"environment": env, "repeats": repeats, "forward": {}, "train": {}, "ratios": {},
                              "settings": {"forward": f"batch {FORWARD_BATCH}, {FORWARD_SIZE}x{FORWARD_SIZE}, eval, "
                                                      f"inference_mode, {forward_calls} calls per sample",
                                           "train": f"batch {TRAIN_BATCH}, {TRAIN_SIZE}x{TRAIN_SIZE}, SGD "
                                                    f"momentum 0.9, {train_calls} calls per sample"}}
    for arch in args.archs.split(","):
        contenders = forward_contenders(arch, images)
        samples = measure(contenders, repeats, forward_calls, warmup=2, max_wait=args.max_wait)
        forward_rows = summarize(contenders, samples)
        add_percent_of_peak(forward_rows, forward_flops(build("edh", arch).eval(), images[:1]), peaks)
        print_table(forward_rows, FORWARD_COLUMNS, f"\n{arch} forward, batch {FORWARD_BATCH}, {FORWARD_SIZE}x{FORWARD_SIZE} "
                                           "(items = images)")
        if noisy_warning(forward_rows):
            print(noisy_warning(forward_rows))
        del contenders
        gc.collect()
        contenders = train_contenders(arch, train_images, train_labels)
        samples = measure(contenders, repeats, train_calls, warmup=2, max_wait=args.max_wait)
        train_rows = summarize(contenders, samples)
        print_table(train_rows, COLUMNS, f"\n{arch} train step, batch {TRAIN_BATCH}, {TRAIN_SIZE}x{TRAIN_SIZE} "
                                         "(items = images)")
        if noisy_warning(train_rows):
            print(noisy_warning(train_rows))
        final_losses = {c.name: c.step() for c in contenders}
        del contenders
        gc.collect()
        arch_ratios = ratios(forward_rows, train_rows)
        print(f"\n{arch} ratios (medians)")
        print("\n".join(format_ratio(r) for r in arch_ratios), flush=True)
        report["forward"][arch], report["train"][arch], report["ratios"][arch] = forward_rows, train_rows, arch_ratios
        report.setdefault("final_train_losses", {})[arch] = final_losses
    print(f"\nwrote {write_json('classification', report)}")


if __name__ == "__main__":
    main()
