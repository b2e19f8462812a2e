"""Every edh segmentation decoder against segmentation_models_pytorch's same architecture: images/s on CPU.

Run: ``python bench/segmentation.py [--only unet deeplabv3 ...] [--repeats N] [--quick] [--threads T]
[--bf16-rows auto|on|off]`` (bf16 rows by default only where the CPU has bfloat16 instructions).

Per architecture, both models are built with smp's defaults (random weights, 2 classes): a ResNet-34
encoder (dilated as smp dilates it: DeepLabV3 output stride 8, DeepLabV3+ 16), and for DPT a
ViT-S/16 (timm), both at 256x256. edh's segmentation head gets smp's head kernel (3x3 or 1x1,
``heads.mask.kernel_size``), so the two models are the same network: the parameter counts are
printed side by side and match, except where smp keeps weights it never runs (PSPNet reads the
stride-8 level: smp keeps the unused layer3 / layer4 of its ResNet, edh's ``depth: 3`` does not
build them) or where DPT's readout differs (docs/segmentation.md).

Forward: batch 4, 256x256, eval, ``torch.inference_mode()``. smp runs with its defaults
(contiguous) and in channels_last; edh runs through `edh.utils.perf.prepare_for_inference`
(channels_last + BatchNorm folded). Channels_last contenders get the same contiguous batch and
convert it inside the timed step. bf16: smp channels_last under bf16 autocast and smp with bf16 weights
(``model.to(torch.bfloat16)``, the batch cast inside the step) against edh ``--bf16``
(`edh.utils.perf.InferenceModel` with ``bf16=True``), each checked against its fp32 output first;
target edh ``--bf16`` >= 1.3x either. ``pct_of_peak``: a forward's GFLOP/s (``torch.utils.flop_counter``)
as a % of the machine's matmul peak of its precision (`common.matmul_peak_gflops`).
Train step: batch 4, 256x256, SGD (momentum 0.9) + cross-entropy, train mode, smp contiguous and
channels_last, edh channels_last (``train.channels_last: true``).
Targets (issue 15, for each architecture): forward and train step >= 1.2x smp default and
>= 1.0x smp channels_last. Contenders of a group are timed round-robin (`common.measure`); medians
of quiet samples are reported; results go to ``bench/results/segmentation.json``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import segmentation_models_pytorch as smp
import torch
from common import (Contender, add_bf16_rows_option, add_percent_of_peak, apply_threads, base_parser, bf16_rows,
                    bf16_target, check_bf16_agrees, environment, format_ratio, forward_flops, forward_step,
                    matmul_peak_gflops, measure, noisy_warning, peaks_text, print_table, ratio, seed_everything,
                    sgd_train_step, summarize, write_json)

import edh
from edh.utils.perf import InferenceModel, prepare_for_inference, to_channels_last

NUM_CLASSES = 2
BATCH, SIZE = 4, 256
COLUMNS = ["name", "items_per_s", "ms_per_step", "best_items_per_s", "quiet_samples"]
FORWARD_COLUMNS = COLUMNS + ["pct_of_peak", "peak"]
FAST, BF16 = "edh prepared (CL + BN folded)", "edh --bf16 (InferenceModel: CL + BN folded + bf16)"
SMP_BF16, SMP_BF16_WEIGHTS = "smp channels_last + bf16 autocast", "smp channels_last, bf16 weights"
VIT = "vit_small_patch16_224"


@dataclass(frozen=True)
class Arch:
    """One architecture in both libraries: smp's class and options, edh's encoder / decoder / head kernel."""

    smp_class: str
    head_kernel: int
    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "resnet34"})
    decoder: dict[str, Any] = field(default_factory=dict)
    smp_encoder: str = "resnet34"
    smp_options: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    "unet": Arch("Unet", 3),
    "unetplusplus": Arch("UnetPlusPlus", 3),
    "linknet": Arch("Linknet", 1),
    "manet": Arch("MAnet", 3),
    "pan": Arch("PAN", 3, encoder={"name": "resnet34", "output_stride": 16}),
    "pspnet": Arch("PSPNet", 3, encoder={"name": "resnet34", "depth": 3}),  # smp's encoder_depth 3
    "deeplabv3": Arch("DeepLabV3", 1, encoder={"name": "resnet34", "output_stride": 8}),
    "deeplabv3plus": Arch("DeepLabV3Plus", 1, encoder={"name": "resnet34", "output_stride": 16}),
    "upernet": Arch("UPerNet", 1),
    "segformer": Arch("Segformer", 1),
    "dpt": Arch("DPT", 3, encoder={"name": f"timm:{VIT}", "out_indices": [2, 5, 8, 11], "options": {"img_size": SIZE}},
                smp_encoder=f"tu-{VIT}", smp_options={"dynamic_img_size": True, "decoder_readout": "ignore"}),
}


def build(arch_name: str, kind: str) -> torch.nn.Module:
    """A fresh, seeded model of ``arch_name``: ``kind`` is ``edh`` or ``smp``."""
    arch = ARCHS[arch_name]
    seed_everything(0)
    if kind == "edh":
        decoder = arch.decoder or {"name": arch_name}
        return edh.build({"encoder": dict(arch.encoder), "decoder": dict(decoder),
                          "heads": {"mask": {"type": "segmentation", "source": "decoder", "num_classes": NUM_CLASSES,
                                             "kernel_size": arch.head_kernel}}})
    return getattr(smp, arch.smp_class)(arch.smp_encoder, encoder_weights=None, classes=NUM_CLASSES,
                                        **arch.smp_options)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bf16_input_step(model: torch.nn.Module, images: torch.Tensor) -> Any:
    """A forward of a bf16-weight peer: the fp32 batch cast to bf16 channels_last inside the step."""
    def step() -> Any:
        with torch.inference_mode():
            return model(images.to(torch.bfloat16, memory_format=torch.channels_last))

    return step


def forward_contenders(arch: str, images: torch.Tensor, bf16: bool) -> list[Contender]:
    smp_model, edh_model = build(arch, "smp").eval(), build(arch, "edh").eval()
    smp_cl = build(arch, "smp").eval().to(memory_format=torch.channels_last)
    edh_fast = prepare_for_inference(edh_model)
    with torch.inference_mode():  # the speed options keep the outputs
        reference = edh_model(images)["mask"]
        error = ((edh_fast(to_channels_last(images))["mask"] - reference).abs().max() / reference.abs().max()).item()
    assert error < 1e-3, f"prepared edh {arch} differs from eager by {error} (relative to its largest logit)"
    n = images.shape[0]
    fp32 = [
        Contender("smp (default)", forward_step(smp_model, images), n, {"memory_format": "contiguous"}),
        Contender("smp channels_last", forward_step(smp_cl, images, True), n, {"memory_format": "channels_last"}),
        Contender(FAST, forward_step(edh_fast, images, True), n, {"memory_format": "channels_last", "bn_folded": True})]
    if not bf16:
        return fp32
    edh_bf16 = InferenceModel(edh_model, bf16=True)
    smp_bf16_weights = build(arch, "smp").eval().to(torch.bfloat16, memory_format=torch.channels_last)
    with torch.inference_mode():
        smp_reference = smp_model(images)
        bf16_errors = {name: check_bf16_agrees(name, output, expected) for name, output, expected in (
            (BF16, edh_bf16(images)["mask"], reference),
            (SMP_BF16, forward_step(smp_cl, images, True, bf16=True)(), smp_reference),
            (SMP_BF16_WEIGHTS, bf16_input_step(smp_bf16_weights, images)(), smp_reference))}
    print(f"{arch}: bf16 max |diff| to fp32 / std: " + ", ".join(f"{k} {v:.3f}" for k, v in bf16_errors.items()))
    return fp32 + [
        Contender(SMP_BF16, forward_step(smp_cl, images, True, bf16=True), n,
                  {"memory_format": "channels_last", "dtype": "bf16 autocast"}),
        Contender(SMP_BF16_WEIGHTS, bf16_input_step(smp_bf16_weights, images), n,
                  {"memory_format": "channels_last", "dtype": "bf16 weights and input"}),
        Contender(BF16, forward_step(edh_bf16, images), n,
                  {"memory_format": "channels_last", "bn_folded": True, "dtype": "bf16 autocast, bf16 weights"}),
    ]


def train_contenders(arch: str, images: torch.Tensor, masks: torch.Tensor) -> list[Contender]:
    return [Contender(name, sgd_train_step(kind, build(arch, kind), images, masks, "mask", channels_last),
                      images.shape[0], {"kind": kind})
            for name, kind, channels_last in (("smp contiguous", "smp", False), ("smp channels_last", "smp", True),
                                              ("edh channels_last", "edh", True))]


def ratios(forward_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target ratios, from medians (``value``) and from best samples (``best``)."""
    def values(key: str) -> list[tuple[str, float, float]]:
        forward = {r["name"]: r[key] for r in forward_rows}
        train = {r["name"]: r[key] for r in train_rows}
        fast, edh_train = forward[FAST], train["edh channels_last"]
        found = [("forward / smp default", fast / forward["smp (default)"], 1.2),
                 ("forward / smp channels_last", fast / forward["smp channels_last"], 1.0),
                 ("train step / smp default", edh_train / train["smp contiguous"], 1.2),
                 ("train step / smp channels_last", edh_train / train["smp channels_last"], 1.0)]
        if BF16 in forward:
            found += [("edh --bf16 / smp bf16 autocast, forward", forward[BF16] / forward[SMP_BF16], bf16_target(1.3)),
                      ("edh --bf16 / smp bf16 weights, forward", forward[BF16] / forward[SMP_BF16_WEIGHTS],
                       bf16_target(1.3))]
        return found

    out = [ratio(name, value, target) for name, value, target in values("items_per_s")]
    for r, (_, best, _) in zip(out, values("best_items_per_s")):
        r["best"] = best
    return out


def bench_arch(arch: str, repeats: int, forward_calls: int, max_wait: float, peaks: dict[str, float],
               bf16: bool) -> dict[str, Any]:
    counts = {kind: parameters(build(arch, kind)) for kind in ("edh", "smp")}
    print(f"\n=== {arch}: parameters edh {counts['edh']:,}, smp {ARCHS[arch].smp_class} {counts['smp']:,}", flush=True)
    seed_everything(0)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    masks = torch.randint(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
    contenders = forward_contenders(arch, images, bf16)
    forward_rows = summarize(contenders, measure(contenders, repeats, forward_calls, warmup=2, max_wait=max_wait))
    add_percent_of_peak(forward_rows, forward_flops(build(arch, "edh").eval(), images[:1]), peaks)
    print_table(forward_rows, FORWARD_COLUMNS, f"{arch} forward, batch {BATCH}, {SIZE}x{SIZE} (items = images)")
    del contenders
    gc.collect()
    contenders = train_contenders(arch, images, masks)
    train_rows = summarize(contenders, measure(contenders, repeats, 1, warmup=2, max_wait=max_wait))
    print_table(train_rows, COLUMNS, f"{arch} train step, batch {BATCH}, {SIZE}x{SIZE} (items = images)")
    del contenders
    gc.collect()
    for rows in (forward_rows, train_rows):
        if noisy_warning(rows):
            print(noisy_warning(rows))
    found = ratios(forward_rows, train_rows)
    print("\n".join(format_ratio(r) for r in found), flush=True)
    return {"parameters": counts, "forward": forward_rows, "train": train_rows, "ratios": found}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--only", nargs="+", choices=sorted(ARCHS), default=list(ARCHS))
    add_bf16_rows_option(parser)  # emulated, the three bf16 rows take longer than the rest of an architecture
    args = parser.parse_args()
    bf16 = bf16_rows(args.bf16_rows)
    threads = apply_threads(args.threads)
    repeats, forward_calls = (2, 1) if args.quick else (args.repeats, 2)
    env = environment()
    peaks = env["matmul_peak_gflops"] = {"fp32": matmul_peak_gflops(torch.float32),
                                         "bf16": matmul_peak_gflops(torch.bfloat16)}
    print(f"torch {env['torch']}, smp {smp.__version__}, {threads} threads, {env['cpu']}; "
          f"{repeats} round-robin repeats, medians; flags {' '.join(env['cpu_flags'])}; oneDNN {env['onednn']}; "
          + peaks_text(peaks) + ("" if bf16 else "; no bf16 rows (--bf16-rows)"), flush=True)
    results = {arch: bench_arch(arch, repeats, forward_calls, args.max_wait, peaks, bf16) for arch in args.only}
    print("\nsummary: edh / smp, medians (targets: >= 1.2x default, >= 1.0x channels_last)")
    print(f"{'decoder':<14} {'params edh':>11} {'params smp':>11} {'fwd/default':>11} {'fwd/CL':>7} "
          f"{'train/default':>13} {'train/CL':>8} {'bf16/smp bf16':>13} {'bf16/smp bf16 w':>15}")
    for arch, result in results.items():
        values = [f"{r['value']:.2f}x" for r in result["ratios"]] + ["-", "-"]  # "-": no bf16 rows
        counts = result["parameters"]
        print(f"{arch:<14} {counts['edh']:>11,} {counts['smp']:>11,} {values[0]:>11} {values[1]:>7} "
              f"{values[2]:>13} {values[3]:>8} {values[4]:>13} {values[5]:>15}")
    report = {"environment": env, "smp": smp.__version__, "repeats": repeats,
              "settings": {"forward": f"batch {BATCH}, {SIZE}x{SIZE}, eval, inference_mode, {forward_calls} calls "
                                      "per sample", "train": f"batch {BATCH}, {SIZE}x{SIZE}, SGD momentum 0.9, CE"},
              "architectures": results}
    print(f"\nwrote {write_json('segmentation', report)}")


if __name__ == "__main__":
    main()
