"""Decodes a JSONL file of inputs with a checkpoint: greedy, temperature sampling or beams.

    python -m irl_lm.sample --hf /ckpts/flan-t5-base --input-file in.jsonl \
        --output-file out.jsonl --method beam --num-beams 4 --max-decode-len 64
    python -m irl_lm.sample --workdir workdirs/ft --input-file in.jsonl --output-file out.jsonl \
        --method temperature --temperature 0.7 --top-p 0.9 --num-decodes 4 --seed 1

Each input line holds `"inputs"` (text; needs the checkpoint's vocabulary) or `"input_ids"`
(token ids, in the vocabulary's ids: where a tokenizer.json's token 0 trades places with a
free id, `config.model.token_zero_row`, so do `input_ids` and `output_ids`). For T5 they are
the encoder input (EOS appended when missing); for a decoder-only model the prompt to
continue: `input_ids` as given, text formatted by `--prompt-format` (`prefix_lm`: BOS + text
+ EOS, as the trainer formats its examples, the default for `--workdir`; `continue`: the
vocabulary's BOS if it has one + text, as transformers' tokenizers do, the default for
`--hf`). Each output line, in input order, holds `"output_ids"` (one list per decode or
beam, without padding), `"outputs"` (their text, when there is a vocabulary), `"scores"`
(beam: the length-normalised beam score; sampling: the sequence's log-probability under the
model) and `"lengths"`. Rows are sharded over the local devices (`--fsdp` / `--tensor` shard
the parameters); one shape is compiled once.

`--rerank reward` (or `logprob`, `mean_logprob`) orders each input's decodes best first by
the checkpoint's extracted reward R (`irl_lm.reward`; γ from `--gamma`, else the run's) and
adds `"rewards"` and `"log_probs"` (log π(y|x)) per decode; `--keep K` keeps the best K.
Best-of-N: `--method temperature --num-decodes 8 --rerank reward --keep 1`. Text inputs
are formatted with the run's task template first (`--template`, `--task`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import string
import sys

import jax
import numpy as np
from tqdm import tqdm

from irl_lm import checkpointing, decoding, files, sharding
from irl_lm.data.vocabularies import load_vocabulary
from irl_lm.losses.iqlearn import RANKERS
from irl_lm.models import build_model


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_source_args(p)
    p.add_argument("--method", choices=decoding.METHODS, default="greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus filtering")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.6, help="beam length penalty exponent")
    p.add_argument("--num-decodes", type=int, default=1, help="samples per input")
    p.add_argument("--max-decode-len", type=int, default=64)
    p.add_argument("--max-input-len", type=int, default=0, help="0: the longest input")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rerank",
        choices=["none", *RANKERS],
        default="none",
        help="order each input's decodes best first by: reward (the extracted reward R, "
        "irl_lm.reward), logprob (log π(y|x)), mean_logprob (per token)",
    )
    p.add_argument("--keep", type=int, default=0, help="with --rerank: keep the best K (0: all)")
    p.add_argument("--gamma", type=float, default=None, help="--rerank reward: default the run's")
    return p.parse_args(argv)


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint and input flags `irl_lm.sample` and `irl_lm.reward` share."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help="a Hugging Face model folder")
    source.add_argument("--workdir", help="a training workdir (latest step) or converted folder")
    p.add_argument("--input-file", required=True)
    p.add_argument("--output-file", required=True)
    p.add_argument("--batch-size", type=int, default=32, help="rows per call")
    p.add_argument(
        "--prompt-format",
        choices=["auto", "prefix_lm", "continue"],
        default="auto",
        help="decoder-only text inputs (see above); auto: prefix_lm for --workdir, "
        "continue for --hf",
    )
    p.add_argument(
        "--template",
        default="auto",
        help="the template text inputs are formatted with, e.g. 'summarize: {document}'; "
        "auto: the workdir's task's (none for --hf unless --task is given); none: as given",
    )
    p.add_argument("--task", default="", help="a paper task (xsum, ...) whose template applies")
    p.add_argument("--eos-id", type=int, default=None, help="default: the vocabulary's, else 1")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--fsdp", type=int, default=1)
    p.add_argument("--tensor", type=int, default=1)


@dataclasses.dataclass(frozen=True)
class ReadyCheckpoint:
    """A checkpoint ready to run: its model, mesh, vocabulary (None without tokenizer
    files), EOS, whether the model reads inputs with an encoder, and the text format of a
    prompt (token ids before and after the encoded text)."""

    source: checkpointing.InitSource
    model: object
    mesh: object
    vocab: object
    eos_id: int
    encoder: bool
    text_format: tuple
    template: str | None = None  # the task's input template (text inputs), or None

    def load_params(self):
        abstract, shardings = sharding.abstract_params(self.model, self.mesh)
        return self.source.load_params(self.model, abstract, shardings)


def load_checkpoint(args) -> ReadyCheckpoint:
    """The checkpoint of the CLI flags (`add_source_args`)."""
    return ready_checkpoint(
        f"hf:{args.hf}" if args.hf else args.workdir,
        dtype=args.dtype,
        fsdp=args.fsdp,
        tensor=args.tensor,
        eos_id=args.eos_id,
        prompt_format=args.prompt_format,
        template=_template_flag(args),
    )


def _template_flag(args) -> str:
    if args.task:
        if args.template not in ("auto", ""):
            raise ValueError("give --template or --task, not both")
        return f"task:{args.task}"
    return args.template


def ready_checkpoint(
    source: str,
    *,
    dtype: str = "float32",
    fsdp: int = 1,
    tensor: int = 1,
    eos_id: int | None = None,
    prompt_format: str = "auto",
    template: str = "auto",
) -> ReadyCheckpoint:
    """A checkpoint (`hf:DIR`, a workdir or a converted folder) ready to decode or score.

    `template`: how text inputs are formatted: "auto" (a workdir's task template, as its
    training formatted inputs; none for `hf:`), "none", "task:<paper task>", or a template."""
    source = checkpointing.parse_init_from(source)
    model = build_model(source.model_config() | {"dtype": dtype, "dropout_rate": 0.0})
    mesh = sharding.make_mesh({"data": -1, "fsdp": fsdp, "tensor": tensor})
    vocab_folder = source.vocabulary_folder()
    vocab = load_vocabulary(vocab_folder) if vocab_folder else None
    eos_id = eos_id if eos_id is not None else vocab.eos_id if vocab else 1
    # T5 reads its inputs with the encoder (EOS-terminated, cut at the end when too long);
    # a decoder-only model continues a prompt (no EOS, cut at the start when too long).
    encoder = type(model).input_features[0] == "encoder_input_tokens"
    text_format = ((), ())
    if not encoder and vocab is not None:
        from irl_lm.data import pipeline  # brings TensorFlow: only for decoder-only text

        if prompt_format == "auto":
            prompt_format = "continue" if source.kind == "hf" else "prefix_lm"
        bos = pipeline.vocabulary_bos_id(vocab)
        if prompt_format == "prefix_lm":
            text_format = (pipeline.prompt_prefix(not encoder, vocab), [eos_id])
        elif bos is not None:
            text_format = ([bos], ())
    template = _resolve_template(template, source)
    return ReadyCheckpoint(source, model, mesh, vocab, eos_id, encoder, text_format, template)


def _resolve_template(template: str, source: checkpointing.InitSource) -> str | None:
    if template in ("none", ""):
        return None
    if template == "auto":
        config_path = files.path(source.folder, "config.json")
        if source.kind != "workdir" or not config_path.exists():
            return None
        task = files.read_json(config_path).get("task") or {}
    elif template.startswith("task:"):
        task = {"name": template.removeprefix("task:")}
    else:
        task = {"inputs": template}
    from irl_lm.data import text_tasks  # brings seqio: only where a template may apply

    resolved = text_tasks.input_template(task)
    if resolved is None and template.startswith("task:"):
        raise ValueError(
            f"--task={task['name']!r} is not a paper task; known: {sorted(text_tasks.TEXT_TASKS)}"
        )
    if resolved is not None:
        text_tasks.template_fields(resolved, "inputs")  # a bad template fails here, by name
    return resolved


def format_input(record: dict, where: str, template: str | None) -> dict:
    """`record` with its text `inputs` formatted by `template`: from the fields the template
    reads (a record may hold them by name, e.g. `document`), or from `inputs` when the
    template reads one field."""
    if template is None or "input_ids" in record:
        return record
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    if all(f in record for f in fields):
        values = {f: record[f] for f in fields}
    elif len(fields) == 1 and isinstance(record.get("inputs"), str):
        values = {fields[0]: record["inputs"]}
    else:
        raise ValueError(
            f"{where}: the input template {template!r} reads {fields}; give them as keys, "
            "or 'inputs' when it reads one field"
        )
    return record | {"inputs": template.format_map(values)}


def record_ids(record, where, *, ids_key, text_key, vocab, vocab_size, text_format=((), ())):
    """The token ids of `record[ids_key]` (as given), or of the text `record[text_key]`
    (encoded, between the two id lists of `text_format`)."""
    if ids_key in record:
        ids = record[ids_key]
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ValueError(f"{where}: '{ids_key}' must be a list of integers")
    elif text_key in record:
        if vocab is None:
            raise ValueError(
                f"{where}: '{text_key}' is text, but the checkpoint has no vocabulary "
                f"(no tokenizer file); give '{ids_key}' instead"
            )
        if not isinstance(record[text_key], str):
            raise ValueError(f"{where}: '{text_key}' must be a string")
        ids = [*text_format[0], *vocab.encode(record[text_key]), *text_format[1]]
    else:
        raise ValueError(f"{where}: needs '{text_key}' (text) or '{ids_key}' (token ids)")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{where}: token ids {bad[:5]} outside [0, {vocab_size})")
    return ids


def prompt_ids(record, where, loaded: ReadyCheckpoint) -> list[int]:
    """A line's prompt: `input_ids` as given, or the text `inputs` in the prompt format;
    EOS-terminated for an encoder."""
    ids = record_ids(
        format_input(record, where, loaded.template),
        where,
        ids_key="input_ids",
        text_key="inputs",
        vocab=loaded.vocab,
        vocab_size=loaded.model.config.vocab_size,
        text_format=loaded.text_format,
    )
    if loaded.encoder and not (ids and ids[-1] == loaded.eos_id):
        ids = [*ids, loaded.eos_id]
    if not ids:
        raise ValueError(f"{where}: empty prompt")
    return ids


def read_inputs(path: str, loaded: ReadyCheckpoint) -> list[list[int]]:
    """Prompt ids per line; errors name the file and line."""
    rows = [prompt_ids(record, where, loaded) for where, record in files.read_jsonl_records(path)]
    if not rows:
        raise ValueError(f"{path}: no inputs")
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    loaded = load_checkpoint(args)
    model, mesh, eos_id, encoder = loaded.model, loaded.mesh, loaded.eos_id, loaded.encoder
    inputs = read_inputs(args.input_file, loaded)
    feature = type(model).input_features[0]
    length = args.max_input_len or max(len(ids) for ids in inputs)
    truncated = sum(len(ids) > length for ids in inputs)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = math.ceil(args.batch_size / shards) * shards
    if args.keep and args.rerank == "none":
        raise ValueError("--keep needs --rerank (which decodes are the best)")

    with sharding.use_mesh(mesh):
        params = loaded.load_params()
        scorer = None
        if args.rerank != "none":
            from irl_lm.reward import RewardModel, run_gamma  # reward builds on this module

            gamma = run_gamma(loaded, args.gamma)
            scorer = RewardModel(loaded, params, gamma=gamma, batch_size=args.batch_size)
        decode = jax.jit(
            decoding.make_decoder(
                model,
                args.method,
                max_len=args.max_decode_len,
                eos_id=eos_id,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                num_decodes=args.num_decodes,
                num_beams=args.num_beams,
                alpha=args.alpha,
            )
        )
        key = jax.random.PRNGKey(args.seed)
        with open(args.output_file, "w") as out:
            for start in tqdm(range(0, len(inputs), batch_size), desc="decoding", unit="batch"):
                chunk = inputs[start : start + batch_size]
                tokens = np.zeros((batch_size, length), np.int32)
                for row, ids in enumerate(chunk):
                    if len(ids) > length:
                        ids = [*ids[: length - 1], eos_id] if encoder else ids[-length:]
                    tokens[row, : len(ids)] = ids
                batch = sharding.shard_host_batch({feature: tokens}, mesh)
                result = jax.device_get(decode(params, batch, jax.random.fold_in(key, start)))
                records = [
                    _record(result, row, loaded.vocab, args.method) for row in range(len(chunk))
                ]
                if scorer is not None:
                    prompts = [list(t[t > 0]) if encoder else _prompt(t) for t in tokens]
                    widths = (length, args.max_decode_len)
                    records = _reranked(records, prompts, scorer, args.rerank, args.keep, widths)
                for record in records:
                    out.write(json.dumps(record) + "\n")
    summary = {"inputs": len(inputs), "truncated_inputs": truncated, "output": args.output_file}
    if scorer is not None:
        summary |= {"ranked_by": args.rerank, "gamma": scorer.gamma}
    if truncated:
        print(f"{truncated} inputs longer than {length} tokens were truncated", file=sys.stderr)
    print(json.dumps(summary))
    return summary


def _prompt(tokens_T) -> list[int]:
    """A decoder-only prompt row's ids (right-padded with 0)."""
    return [int(t) for t in tokens_T[: int(np.sum(tokens_T != 0))]]


def _reranked(records, prompts, scorer, ranker: str, keep: int, widths) -> list[dict]:
    """`records` with each input's decodes ordered best first by `ranker` (the first `keep`
    of them when `keep` > 0), and every decode's extracted reward R and log π(y|x)."""
    pairs = [(i, ids) for i, r in enumerate(records) for ids in r["output_ids"] if ids]
    scored = scorer.score_ids(
        [[int(t) for t in prompts[i]] for i, _ in pairs],
        [ids for _, ids in pairs],
        prompt_width=widths[0],
        target_width=widths[1],  # one shape for every batch
    )
    found = iter(scored)
    out = []
    for record in records:
        # An empty decode (none at all) scores lowest under every ranker.
        empty = {"reward": -np.inf, "log_prob": -np.inf, "length": 1}
        scores = [next(found) if ids else empty for ids in record["output_ids"]]
        key = RANKERS[ranker]
        order = sorted(
            range(len(scores)),
            key=lambda j: -key(scores[j]["reward"], scores[j]["log_prob"], scores[j]["length"]),
        )
        order = order[:keep] if keep > 0 else order
        ranked = {k: [v[j] for j in order] for k, v in record.items()}
        ranked["rewards"] = [scores[j]["reward"] for j in order]
        ranked["log_probs"] = [scores[j]["log_prob"] for j in order]
        out.append(ranked)
    return out


def _record(result, row: int, vocab, method: str) -> dict:
    lengths = [int(n) for n in result["lengths"][row]]
    output_ids = [
        [int(t) for t in seq[:n]] for seq, n in zip(result["tokens"][row], lengths, strict=True)
    ]
    if method == "beam":
        scores = [float(s) for s in result["scores"][row]]
    else:
        scores = [float(s) for s in result["log_probs"][row].sum(-1)]
    record = {"output_ids": output_ids, "scores": scores, "lengths": lengths}
    if vocab is not None:
        record["outputs"] = [vocab.decode(ids) for ids in output_ids]
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
