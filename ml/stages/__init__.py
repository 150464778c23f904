"""ConG pipeline stages. Each stage is a function ``stage(config, reporter=None) -> dict`` with a
config dataclass; it writes under ``config.output_dir``, leaves ``DONE.json`` (its summary) when
finished, returns that summary at once when rerun, and resumes partial work after a crash."""

# The training stages, which run on several processes (ml.distributed; tests/ml/test_distributed.py). What a stage
# computes before training (weak_align's labelled samples, wspo's targets, dpo's filtered pairs) is computed by the
# first process alone and read by the others (ml.stages._scale.prepare_once).
DISTRIBUTED_STAGES = ("sft", "dpo", "weak_align", "wspo", "auxconf")
