from __future__ import annotations

from edh.commands import finite_float, positive_int

NAME = "translate"
ITEMS = "sentences"  # the sentences may also follow the options (edh translate RUNDIR --beam 4 "a sentence")
HELP = "translate sentences with a trained translation run (greedy or beam search)"



def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("sentences", nargs="*", help="sentences to translate (quote each one)")
    parser.add_argument("--input", help="a file with one sentence per line")
    parser.add_argument("--out", help="write the translations here, one per line (default: print them)")
    parser.add_argument("--beam", type=positive_int, help="beam size; 1 = greedy (default: the run's lm head setting)")
    parser.add_argument("--length-penalty", type=finite_float, help="beam scores are divided by length ** this")
    parser.add_argument("--max-new-tokens", type=positive_int, help="longest translation in tokens")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="sentences decoded together")


def run(args) -> int:
    from edh.workflows.run import load_run
    from edh.workflows.translate import translate_lines

    if args.beam is not None and args.beam < 1:
        raise ValueError(f"--beam must be at least 1, got {args.beam}")
    translate_lines(load_run(args.run_dir), args.sentences, args.input, args.out, beam_size=args.beam,
                    length_penalty=args.length_penalty, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size)
    return 0
