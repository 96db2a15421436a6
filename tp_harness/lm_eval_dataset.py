"""A stable import path named by every shipped task spec (``custom_dataset: !function
tp_harness.lm_eval_dataset.load``): the implementation is :mod:`tp_harness.interop.lm_eval_dataset`. Keep this
module; specs and exported tasks name it."""

from tp_harness.interop.lm_eval_dataset import load

__all__ = ["load"]
