"""Text generation with a trained run: `Translator` (text, images or audio in, text out, batched) and
its evaluation.

The run folder holds everything: the model (spec + weights) and ``tokenizer.json`` with the
special tokens, so no flags are needed beyond the run folder. Inputs are read by the reader of the
run's input kind (`edh.workflows.inputs`): sentences for a translator, image files for a captioner,
audio clips for a speech model. BLEU and chrF come from sacrebleu on detokenised text against the raw
reference text; CER is the character edit distance over the reference's length (torchmetrics);
exact match compares whitespace-normalised strings.

Example:
    >>> translator = Translator.load("runs/translator-numbers")
    >>> translator.translate(["four hundred and two"])
    ['quatre cent deux']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edh.ops.generation import generate, generates, generation_head
from edh.workflows.inputs import encode_texts, run_tokenizer
from edh.workflows.run import Run


class Translator:
    """A translation run's model and tokenizer.

    Args:
        run: a loaded run whose model generates (a `StepDecoder` and a head that ``generates``, e.g.
            ``lm``), and whose folder holds the tokenizer named in its data info.
    """

    def __init__(self, run: Run) -> None:
        if not generates(run.model):
            raise ValueError(f"{run.path} is not a translation run: its model has no step-wise decoder "
                             "(decoder: transformer); use `edh predict` for other runs")
        self.run = run
        self.model = run.model.eval()
        self.head_name, self.head = generation_head(self.model)
        self.tokenizer = run_tokenizer(run)

    @classmethod
    def load(cls, run_dir: str | Path) -> "Translator":
        from edh.workflows.run import load_run

        return cls(load_run(run_dir))

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """Source token ids as the training data had them (truncated, ``<eos>`` last)."""
        return encode_texts(self.run, self.tokenizer, texts)

    def translate_ids(self, sources: list[torch.Tensor], beam_size: int | None = None,
                      length_penalty: float | None = None, max_new_tokens: int | None = None, batch_size: int = 64,
                      progress: bool = False) -> list[list[int]]:
        """Generated token ids (up to ``<eos>``) for each source; sources of similar length share a batch."""
        from edh.data.text import pad_batch

        device = next(self.model.parameters()).device
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        results: list[list[int]] = [[] for _ in sources]
        for chunk in _progress(chunks, "translating", progress):
            batch = pad_batch([sources[i] for i in chunk], self.tokenizer.pad_id).to(device)
            out = generate(self.model, batch, beam_size=beam_size, max_new_tokens=max_new_tokens,
                           length_penalty=length_penalty, head=self.head_name)
            for row, index in enumerate(chunk):
                results[index] = out.tokens[row, :int(out.lengths[row])].tolist()
        return results

    def translate(self, texts: list[str], **options: Any) -> list[str]:
        """Translations of ``texts`` (options: beam_size, length_penalty, max_new_tokens, batch_size)."""
        ids = self.translate_ids(self.encode(texts), **options)
        return [self.tokenizer.decode(row) if text.strip() else "" for row, text in zip(ids, texts)]

    def generate_ids(self, inputs: torch.Tensor, beam_size: int | None = None, length_penalty: float | None = None,
                     max_new_tokens: int | None = None) -> list[list[int]]:
        """Generated token ids (up to ``<eos>``) for one batch of model inputs (images, audio, token ids)."""
        device = next(self.model.parameters()).device
        out = generate(self.model, inputs.to(device), beam_size=beam_size, max_new_tokens=max_new_tokens,
                       length_penalty=length_penalty, head=self.head_name)
        return [out.tokens[row, :int(out.lengths[row])].tolist() for row in range(out.tokens.shape[0])]

    def describe_files(self, paths: list[str], batch_size: int = 16, **options: Any) -> list[str]:
        """The text generated for each input file (an image's caption, a clip's transcript)."""
        from edh.workflows.inputs import reader_for

        reader = reader_for(self.run)
        step = 1 if reader.one_at_a_time(self.run) else batch_size
        texts: list[str] = []
        for start in range(0, len(paths), step):
            chunk = [Path(p) for p in paths[start:start + step]]
            texts += self.tokenizer.decode_batch(self.generate_ids(reader.read(self.run, chunk), **options))
        return texts


def translation_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100), character error rate (0-1+, torchmetrics) and exact
    match (0-1)."""
    import sacrebleu
    from torchmetrics.functional.text import char_error_rate

    if not references:
        raise ValueError("no references to score against (the split is empty)")
    exact = sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references))
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "cer": float(char_error_rate(hypotheses, references)),
            "exact_match": exact / len(references)}


def evaluate_translation(run: Run, split: str = "test", batch_size: int | None = None, progress: bool = True,
                         beam_size: int | None = None, examples: int = 5, out_dir: str | Path | None = None):
    """BLEU, chrF and exact match of generated translations of ``split``, with example lines.

    The data is rebuilt with the run's own tokenizer; generation uses the head's
    ``generation_defaults()`` (``beam_size``, ``length_penalty``) unless ``beam_size`` is given. With
    ``out_dir``, every translation is written to ``out_dir/translations-<split>.tsv`` (source,
    translation, reference).

    Returns:
        an `edh.workflows.evaluate.Evaluation` with ``metrics[head] = {bleu, chrf, exact_match}`` and the
        examples in ``reports[head]``.
    """
    from edh.workflows.data_check import rebuild_data
    from edh.workflows.evaluation import Evaluation

    translator = Translator(run)
    spec = run.spec
    bundle = rebuild_data(run)  # with the run's own tokenizer
    dataset = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    # inputs of similar size share a batch (token sources by length, clips by samples; images keep their order)
    order = sorted(range(len(dataset)), key=lambda i: dataset[i][0].shape[-1])
    step = batch_size or spec.data.batch_size
    chunks = [order[start:start + step] for start in range(0, len(order), step)]
    ids: list[list[int]] = [[] for _ in order]
    for chunk in _progress(chunks, "generating", progress):
        inputs = bundle.collate_fn([dataset[i] for i in chunk])[0]
        for index, row in zip(chunk, translator.generate_ids(inputs, beam_size=beam_size)):
            ids[index] = row
    hypotheses = translator.tokenizer.decode_batch(ids)
    sources, references = list(dataset.source_texts), list(dataset.references)
    result = Evaluation(split, len(references))
    result.metrics[translator.head_name] = translation_scores(hypotheses, references)
    result.reports[translator.head_name] = example_lines(sources, hypotheses, references, examples)
    if out_dir is not None:
        from edh.utils.io import atomic_write_text

        path = Path(out_dir) / f"translations-{split}.tsv"
        rows = ["source\ttranslation\treference"] + ["\t".join(r) for r in zip(sources, hypotheses, references)]
        atomic_write_text(path, "\n".join(rows) + "\n")
        result.reports[translator.head_name].append(f"all translations: {path}")
    return result


def example_lines(sources: list[str], hypotheses: list[str], references: list[str], count: int = 5) -> list[str]:
    """The first ``count`` translations: ``source -> translation`` (+ the reference when they differ)."""
    lines = ["examples (input -> generated):"] if count else []
    for source, hypothesis, reference in list(zip(sources, hypotheses, references))[:count]:
        same = " ".join(hypothesis.split()) == " ".join(reference.split())
        lines.append(f"  {source} -> {hypothesis}" + ("  [exact]" if same else f"  [reference: {reference}]"))
    return lines


def translate_lines(run: Run, texts: list[str], input_file: str | None = None, out_file: str | None = None,
                    **options: Any) -> list[str]:
    """Translate ``texts`` and the lines of ``input_file``; write one line per input to ``out_file``
    (atomically) or print ``source<TAB>translation`` lines. Returns the translations.

    A run whose input is not text (a captioner, a speech model) reads ``texts`` as input files instead
    (`describe_inputs`)."""
    from edh.utils.io import atomic_write_text
    from edh.workflows.inputs import reader_for

    if not reader_for(run).texts:  # the inputs are files
        return describe_inputs(run, list(texts), out_file, **options)
    texts = list(texts)
    if input_file:  # one translation per line, empty lines included (UTF-8, or UTF-16 with a BOM)
        from edh.data.textfiles import read_lines

        texts += read_lines(input_file, "input file")
    if not texts:
        raise ValueError("nothing to translate: give sentences (edh translate RUNDIR \"a sentence\") or --input FILE")
    translations = Translator(run).translate(texts, **{k: v for k, v in options.items() if v is not None})
    if out_file:
        atomic_write_text(out_file, "".join(t + "\n" for t in translations))
        print(f"wrote {len(translations)} translation{'s' * (len(translations) != 1)} to {out_file}")
    else:
        for source, translation in zip(texts, translations):
            print(f"{source}\t{translation}")
    return translations


def describe_inputs(run: Run, paths: list[str], out_dir: str | None = None, **options: Any) -> list[str]:
    """Print ``path<TAB>text`` for each input file of a captioning / speech run; for pictures (images),
    with ``out_dir``, also write them with their captions to ``out_dir/captions.png``."""
    from edh.workflows.inputs import reader_for

    if not paths:
        raise ValueError("give one or more input files: edh predict RUNDIR image.png ... (or clip.wav ...)")
    translator = Translator(run)
    texts = translator.describe_files(paths, **{k: v for k, v in options.items() if v is not None})
    for path, text in zip(paths, texts):
        print(f"{path}\t{translator.head_name}: {text}")
    reader = reader_for(run)
    if out_dir is not None and reader.pictures:
        from edh.utils.plots import image_rows_png

        rows = [(f"{Path(p).name}: {t}", reader.read(run, [Path(p)])) for p, t in zip(paths, texts)]
        print(f"wrote {image_rows_png(rows, run.info.mean, run.info.std, Path(out_dir) / 'captions.png', columns=1)}")
    return texts


def _progress(iterable: list[Any], description: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    from rich.progress import track

    yield from track(iterable, description=description, transient=True)
