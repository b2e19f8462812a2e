"""Word / character error rates and wall time of the speech config, as `edh train` runs it.

    python bench/speech.py [--out runs/bench] [--threads N] [--cold-cache] [--epochs N]

- numbers (configs/speech-numbers-ctc.yaml: espeak-ng's synthetic English numbers, audio encoder + CTC
  head): target test WER <= 0.10 on the held-out voices within 10 minutes of ``edh train`` on the 2-core
  machine. The test split's voices (accents, variants) are never heard in training. The data is built
  once before training (``data s``: reading the cached clips, or with ``--cold-cache`` synthesising them
  into a fresh cache, as on a first run, which then counts in ``total s``).

Prints the CPU, the table (wall time, CPU time / 2: the time with both cores free, and ``others``: how many
cores other processes used meanwhile; above ~0.3 the machine was not quiet and the wall time is not the
machine's), three transcripts, and writes bench/results/speech.json. Needs ``apt-get install espeak-ng``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import environment
from training import accuracy_parser, epochs_done, parse_and_apply, timed_train, write_rows

from edh.core.spec import override
from edh.workflows.demo import load_config
from edh.workflows.evaluate import evaluate_run

CASES = {"numbers": ("speech-numbers-ctc.yaml", {"wer": 0.10}, 600)}  # config, upper bounds, budget in seconds


def build_seconds(spec) -> float:
    """Seconds to build the spec's data: the espeak-ng synthesis on a cold cache, reading the cache otherwise."""
    from edh.data.base import build_data

    begin = time.perf_counter()
    build_data(spec.data.name, spec.data.options(), spec.data.seed)
    return round(time.perf_counter() - begin, 1)


def run_case(name: str, out: Path, cold: bool, epochs: int | None) -> dict:
    config, targets, budget = CASES[name]
    spec = load_config(config)
    if cold:
        spec = override(spec, {"data.cache_dir": tempfile.mkdtemp(prefix="edh-speech-cache-")})
    if epochs:
        spec = override(spec, {"train.epochs": epochs})
    data_seconds = build_seconds(spec)  # a cold cache: the synthesis, which training then reads from the cache
    run, times = timed_train(spec, out / name)
    total = times["seconds"] + (data_seconds if cold else 0.0)
    evaluation = evaluate_run(run, "test", progress=False)
    metrics = evaluation.metrics["text"]
    met = all(metrics[k] <= v for k, v in targets.items()) and total <= budget
    return {"case": name, "config": f"configs/{config}", "test_clips": evaluation.count,
            "test_voices": run.info.extra.get("test_voices"), "epochs_run": epochs_done(out / name),
            "cache": "cold" if cold else "warm", "data_build_s": data_seconds, **times,
            "total_s": round(total, 1), "budget_s": budget,
            **{k: round(v, 4) for k, v in metrics.items()}, "targets": targets, "met": met,
            "examples": _examples(run)}


def _examples(run, count: int = 3) -> list[str]:
    import torch

    from edh.data.base import build_data

    spec = run.spec
    test = build_data(spec.data.name, spec.data.options(), spec.data.seed).test
    items = [test[i] for i in range(min(count, len(test)))]
    waves = torch.nn.utils.rnn.pad_sequence([w for w, _ in items], batch_first=True)
    head = run.model.heads["text"]
    with torch.inference_mode():
        texts = head.predict(run.model.eval()(waves)["text"])["texts"]
    rows = test.rows if hasattr(test, "rows") else [{"text": t} for t in test.texts()]
    return [f"{row.get('voice', '')}: {row['text']!r} -> {text!r}" for row, text in zip(rows, texts)]


def main() -> None:
    parser = accuracy_parser(__doc__.splitlines()[0], sorted(CASES), sorted(CASES))
    parser.add_argument("--cold-cache", action="store_true", help="synthesise the clips again (timed)")
    parser.add_argument("--epochs", type=int, help="override train.epochs (quick checks)")
    args = parse_and_apply(parser)
    env = environment()
    print(f"cpu: {env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, {env['threads']} threads")
    rows = [run_case(name, Path(args.out), args.cold_cache, args.epochs) for name in args.only]
    print(f"\n{'case':<8} {'clips':>5} {'epochs':>6} {'cache':<5} {'data s':>6} {'train s':>7} {'cpu/2 s':>7} "
          f"{'others':>6} {'total s':>7} {'WER':>6} {'CER':>6}  met")
    for r in rows:
        quiet = "" if r["others_cores"] <= 0.3 else "   (machine busy: wall time is not the machine's)"
        print(f"{r['case']:<8} {r['test_clips']:>5} {r['epochs_run']:>6} {r['cache']:<5} {r['data_build_s']:>6.1f} "
              f"{r['seconds']:>7.1f} {r['alone_on_2_cores_s']:>7.1f} {r['others_cores']:>6.2f} {r['total_s']:>7.1f} "
              f"{r['wer']:>6.3f} {r['cer']:>6.3f}  "
              f"{'yes' if r['met'] else 'NO'}   targets: WER <= {r['targets']['wer']} in {r['budget_s']} s{quiet}")
    for r in rows:
        print(f"\n{r['case']} (held-out voices):\n" + "\n".join(r["examples"]))
    write_rows("speech", [{**r, "environment": env} for r in rows])


if __name__ == "__main__":
    main()
