"""spark-submit entry point for the whole nightly run (all stages share the submitted Spark session).

spark-submit --properties-file infra/spark/cpu.conf jobs/nightly.py --as-of 2024-01-31

Split across executor kinds with --until (the markers make the second call resume where the first ended):

spark-submit --properties-file infra/spark/gpu.conf jobs/nightly.py --as-of 2024-01-31 --until embed
spark-submit --properties-file infra/spark/cpu.conf jobs/nightly.py --as-of 2024-01-31
"""

from llmfeat.jobs import log, run_job
from llmfeat.nightly import STAGES, run_nightly


def options(ap) -> None:
    ap.add_argument(
        "--force", action="append", default=[], choices=STAGES, help="redo this stage and its dependents"
    )
    ap.add_argument("--until", choices=STAGES, help="stop after this stage")


if __name__ == "__main__":
    run_job(
        "nightly",
        __doc__,
        lambda spark, cfg, as_of, args: run_nightly(
            cfg, as_of, force=tuple(args.force), until=args.until, log=log
        ),
        options,
    )
