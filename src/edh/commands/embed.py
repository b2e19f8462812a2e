from __future__ import annotations

NAME = "embed"
HELP = "write pooled features of one role for images (linear probing, retrieval) as a .npy array"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUNDIR")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--role", default="encoder", help="encoder, encoder.N (one pyramid level) or decoder")
    parser.add_argument("--out", required=True, help="output .npy file: (N, C) float32, one row per image")


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from edh.workflows.embed import embed_images
    from edh.workflows.run import load_run

    features = embed_images(load_run(args.run_dir), args.images, args.role)
    out = Path(args.out)
    from edh.utils.io import atomic_write

    atomic_write(out, lambda f: np.save(f, features))
    print(f"wrote {out}: {features.shape[0]} x {features.shape[1]} features of {args.role}")
    return 0
