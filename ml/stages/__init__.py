"""ConG pipeline stages. Each stage is a function ``stage(config, reporter=None) -> dict`` with a
config dataclass; it writes under ``config.output_dir``, leaves ``DONE.json`` (its summary) when
finished, returns that summary at once when rerun, and resumes partial work after a crash."""

# The training stages tested on several processes (tests/ml/test_distributed.py). weak_align samples and scores
# before it trains and wspo precomputes weak targets: each process would write those files; not yet.
DISTRIBUTED_STAGES = ("sft", "dpo")
