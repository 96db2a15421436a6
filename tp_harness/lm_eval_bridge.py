"""A stable import path named by exported lm-eval tasks (``from tp_harness.lm_eval_bridge import ...`` in
``<task>_data.py``): the implementation is :mod:`tp_harness.interop.lm_eval_bridge`. Keep this module; artifacts of
earlier runs import it."""

from tp_harness.interop.lm_eval_bridge import (  # noqa: F401
    ExportedTaskScorer,
    __all__,  # noqa: F401
    exported_task_functions,
    make_process_results,
    records_from_values,
    register_with_lm_eval,
    registered_metrics,
    sample_value,
)
