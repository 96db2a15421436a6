"""lm-eval's ``custom_dataset`` for task specs: stock ``lm-eval run --include_path task_specs`` reads our data.

Owns one function, :func:`load`, that a spec names as ``custom_dataset: !function
tp_harness.lm_eval_dataset.load``. lm-eval calls it with the spec's ``metadata`` (which holds
``config_source``, the YAML's path) and ``dataset_kwargs`` as keywords; it loads that spec with
tp-harness's own loader, reads the rows through the registered data formats (plugins' included) and
returns the seeded optimize / validation / test splits as a ``datasets.DatasetDict``. So a task needs
YAML and data only, and lm-eval scores exactly the docs tp-harness scores. It renders no prompt and
runs no model.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_harness.errors import SpecError
from tp_harness.spec.loader import load_spec
from tp_harness.spec.schema import LM_EVAL_LOADER

if TYPE_CHECKING:
    import datasets

    from tp_harness.plugin.hookspecs import Registries


@functools.cache
def _registries() -> Registries:
    from tp_harness.plugin.manager import build_registries

    return build_registries()


def load(*, config_source: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """Build the ``DatasetDict`` of one task spec for lm-eval (its ``custom_dataset``).

    :param config_source: the spec's YAML path; lm-eval's task factory puts it in ``metadata``.
    :param _metadata: the rest of lm-eval's ``metadata`` and ``dataset_kwargs`` (``tp``, ``version``, the
        run's ``--metadata`` and model args); ignored.
    :return: splits ``optimize``, ``validation`` and ``test``, each a ``datasets.Dataset`` of the spec's
        rows, cut as :func:`tp_harness.data.splits.split_docs` cuts them (same seed, same order).
    :raises SpecError: lm-eval gave no YAML path (an inline config), or the spec or its data are broken.
    """
    import datasets

    from tp_harness.data.splits import load_docs, split_docs
    from tp_harness.spec.templates import install_lm_eval_sandbox

    install_lm_eval_sandbox()  # lm-eval renders this task's templates after it loads the data
    if config_source is None or config_source == "inline":
        raise SpecError(
            "(lm-eval task)",
            "custom_dataset",
            f"{LM_EVAL_LOADER} needs the spec's YAML path (lm-eval's metadata.config_source); "
            "load the spec from a YAML file with --include_path, not from an inline config",
        )
    registries = _registries()
    spec = load_spec(Path(config_source), metric_names=set(registries.metrics.names()))
    splits = split_docs(spec, load_docs(spec, registries.data_formats))
    return datasets.DatasetDict({name: datasets.Dataset.from_list(docs) for name, docs in splits.items()})
