"""Translation quality reached and wall time taken by the translator configs, as `edh train` runs them.

    python bench/translation_accuracy.py [--only numbers de-en] [--de-en-minutes 20] [--out runs/bench]

- numbers (configs/translator-numbers.yaml, English -> French number words, held-out test numbers):
  target test BLEU >= 90 and exact match >= 0.80 within 10 minutes of training (greedy decoding;
  training stops at 10 minutes whatever the epoch).
- de-en (configs/translator-de-en.yaml, Debian's trans-de-en): trained for at most ``--de-en-minutes``
  (Lightning ``max_time``), then test BLEU / chrF / exact match with beam search (4 beams) and
  example translations are reported. Needs ``apt-get install trans-de-en``.

Prints a table and the examples; writes bench/results/translation_accuracy.json.
"""

from __future__ import annotations

from pathlib import Path

from training import accuracy_parser, epochs_done, parse_and_apply, timed_train, write_rows

from edh.workflows.demo import load_config
from edh.workflows.translate import evaluate_translation

CASES = {  # config, targets, training budget in seconds
    "numbers": ("translator-numbers.yaml", {"bleu": 90.0, "exact_match": 0.80}, 600),
    "de-en": ("translator-de-en.yaml", {}, None),
}


def run_case(name: str, out: Path, de_en_minutes: float) -> dict:
    config, targets, budget = CASES[name]
    budget = budget or int(de_en_minutes * 60)
    # fit stops early enough that data preparation + fit + the final validation fit in the budget
    run, times = timed_train(load_config(config), out / name, max_time={"seconds": max(60, budget - 45)})
    evaluation = evaluate_translation(run, "test", progress=False, examples=8)
    metrics = evaluation.metrics["tokens"]
    met = (all(metrics[k] >= v for k, v in targets.items()) and times["seconds"] <= budget) if targets else None
    return {"case": name, "config": f"configs/{config}", "test_sentences": evaluation.count,
            "epochs_run": epochs_done(out / name), "train_seconds": times["seconds"], **times, "budget_s": budget,
            **{k: round(v, 4) for k, v in metrics.items()}, "targets": targets, "met": met,
            "examples": evaluation.reports["tokens"]}


def main() -> None:
    parser = accuracy_parser(__doc__.splitlines()[0], sorted(CASES), sorted(CASES, reverse=True))
    parser.add_argument("--de-en-minutes", type=float, default=20.0, help="training time limit for de-en")
    args = parse_and_apply(parser)
    rows = [run_case(name, Path(args.out), args.de_en_minutes) for name in args.only]
    print(f"\n{'case':<8} {'sentences':>9} {'epochs':>6} {'train s':>8} {'BLEU':>6} {'chrF':>6} {'exact':>6}  met")
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['case']:<8} {r['test_sentences']:>9} {r['epochs_run']:>6} {r['train_seconds']:>8.1f} "
              f"{r['bleu']:>6.2f} {r['chrf']:>6.2f} {r['exact_match']:>6.3f}  {met}   targets: {r['targets'] or 'none'}")
    for r in rows:
        print(f"\n{r['case']}:\n" + "\n".join(r["examples"]))
    write_rows("translation_accuracy", rows)


if __name__ == "__main__":
    main()
