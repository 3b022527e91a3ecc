"""Any registered seqio task or mixture, by name, or the config-only `jsonl` task.

Your own seqio task (docs/tasks.md, "Adding a task"), in `my_tasks.py` on PYTHONPATH:
    python -m irl_lm.main --workdir=/tmp/my_task \
        --config=configs/seqio_task.py:task=my_task,modules=my_tasks,inputs=64,targets=32
A JSON Lines file and nothing else (fields or format templates over each line's fields):
    python -m irl_lm.main --workdir=/tmp/qa --config=configs/seqio_task.py:task=jsonl \
        --config.task.files.train=train.jsonl --config.task.files.validation=dev.jsonl \
        --config.task.inputs='question: {question} context: {context}' \
        --config.task.targets=answer --config.task.metrics=rouge  # or bleu,chrf

With no task, the shared GSM8k test file as a jsonl task (an example that runs as it is).
Config arg keys: task, modules (module names joined by "+"), inputs and targets
(the batch lengths in tokens; default 128 and 48), and those of
`irl_lm.config_utils.text_task_config` (mode=tiny|full, loss and its fields, model, evals).
mode=tiny (the default) trains a byte-level model for 30 steps: the task's vocabulary must
then be bytes (seqio.ByteVocabulary; the jsonl task's default); mode=full fine-tunes
`--config.init_from`, whose tokenizer the task's vocabulary must be. Evaluation: the held-out
loss and greedy decoding scored by the task's own metric_fns (per sub-task for a mixture).
"""

from irl_lm.config_utils import text_task_config

OWN = {"task": "", "modules": "", "inputs": "128", "targets": "48"}


def get_config(arg=None):
    parts = [p for p in (arg or "").split(",") if p]
    own = dict(OWN) | {k: v for k, _, v in (p.partition("=") for p in parts) if k in OWN}
    rest = ",".join(p for p in parts if p.partition("=")[0] not in OWN)
    fields = {"modules": [m for m in own["modules"].split("+") if m]}
    if own["task"] in ("", "jsonl"):  # filled in on the command line
        tiny = "mode=full" not in parts
        files = dict(train="", validation="", test="")
        fields |= dict(files=files, inputs="", targets="", metrics="")
        fields["vocabulary"] = "byte" if tiny else ""  # "": config.init_from's tokenizer
    if not own["task"]:  # the example: the shared GSM8k test file as a jsonl task
        data = dict(p.partition("=")[::2] for p in parts).get("data", "../shared/data")
        path = f"{data}/gsm8k/test.jsonl"
        fields["files"] |= dict(train=path, validation=path)
        fields |= dict(inputs="question", targets="answer", metrics="gsm8k_accuracy")
        own["task"] = "jsonl"
    lengths = (int(own["inputs"]), int(own["targets"]))
    config = text_task_config(own["task"], rest or None, lengths=lengths, task_fields=fields)
    config.evals = {k: v for k, v in config.evals.items() if k in ("validation", "decode")}
    return config
