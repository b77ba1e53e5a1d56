import sys

from cl_ml_tools import models
from cl_ml_tools.steps import common as steps

steps.log_to(snakemake.log[0])
try:
    resolved = models.fetch(snakemake.wildcards.model, snakemake.params.overrides)
except models.ModelError as exc:
    # The whole message, not a traceback: it says where to put the file when this machine is offline.
    steps.log.error("%s", exc)
    print(f"\n{exc}\n", file=sys.stderr)
    sys.exit(1)
models.write_record(resolved, snakemake.output[0])
