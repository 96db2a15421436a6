"""Docs and scoring of the task 'medmcqa' exported by tp-harness, for stock lm-eval.

``load`` is the YAML's ``custom_dataset``: the exact test docs tp-harness scored. ``process_results`` is
the YAML's ``process_results``: it turns lm-eval's answers into tp-harness sample records through
``tp_harness.lm_eval_bridge``, whose use here also registers tp-harness's metrics (``ece``, ``auroc``,
``tp_composite``, ...) with lm-eval. Needs tp-harness installed in lm-eval's environment.
"""
from pathlib import Path

import datasets

try:
    from tp_harness.lm_eval_bridge import make_process_results
except ImportError as err:  # the YAML's metric_list names tp-harness metrics
    raise ImportError(f"task 'medmcqa' is scored with tp-harness metrics: install tp-harness ({err})") from err

HERE = Path(__file__).resolve().parent

#: how tp-harness scores this task: mode, lm-eval fields, answer parser, metrics, composite weights
SCORING = {'task': 'medmcqa',
 'output_type': 'multiple_choice',
 'lm_eval': {'output_type': 'multiple_choice',
             'doc_to_text': 'Question: {{question}}\n'
                            'A. {{options.A}}\n'
                            'B. {{options.B}}\n'
                            'C. {{options.C}}\n'
                            'D. {{options.D}}\n'
                            'Answer:',
             'doc_to_choice': '{{[options.A, options.B, options.C, options.D]}}',
             'doc_to_target': "{{['A', 'B', 'C', 'D'].index(answer_idx)}}",
             'target_delimiter': ' '},
 'answer_format': None,
 'metrics': ['acc', 'ece', 'auroc', 'pr_p', 'pr_n'],
 'weights': {'acc': 0.35, 'ifr': 0.25, 'ece': 0.2, 'auroc': 0.1, 'pr_p': 0.05, 'pr_n': 0.05},
 'extra_metrics': []}


def load(**_kwargs):
    return datasets.DatasetDict(
        {"test": datasets.load_dataset("json", data_files=str(HERE / "data" / "medmcqa.test.jsonl"), split="train")}
    )


_process = make_process_results(SCORING)


def process_results(doc, results):
    """One doc's values for lm-eval: its tp-harness sample record under each metric name."""
    return _process(doc, results)
