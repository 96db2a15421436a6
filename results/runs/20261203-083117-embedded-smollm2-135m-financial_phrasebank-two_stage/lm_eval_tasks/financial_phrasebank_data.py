"""Docs and scoring of the task 'financial_phrasebank' exported by tp-harness, for stock lm-eval.

``load`` is the YAML's ``custom_dataset`` (the exact test docs tp-harness scored, ``data/financial_phrasebank.test.jsonl``);
``process_results`` is the YAML's ``process_results`` (lm-eval's answers -> tp-harness sample records). Both
come from ``tp_harness.lm_eval_bridge``, which also registers tp-harness's metrics (``ece``, ``auroc``,
``tp_composite``, ...) with lm-eval. Needs tp-harness installed in lm-eval's environment.
"""
try:
    from tp_harness.lm_eval_bridge import exported_task_functions
except ImportError as err:  # the YAML's metric_list names tp-harness metrics
    raise ImportError(f"task 'financial_phrasebank' is scored with tp-harness metrics: install tp-harness ({err})") from err

#: how tp-harness scores this task: mode, lm-eval fields, answer parser, metrics, composite weights
SCORING = {'task': 'financial_phrasebank',
 'output_type': 'multiple_choice',
 'lm_eval': {'output_type': 'multiple_choice',
             'doc_to_text': 'Sentence: {{sentence}}\nSentiment:',
             'doc_to_choice': ['negative', 'neutral', 'positive'],
             'doc_to_target': "{{['negative', 'neutral', 'positive'].index(label)}}",
             'target_delimiter': ' '},
 'answer_format': None,
 'metrics': ['acc', 'acc_norm', 'ece', 'auroc', 'pr_p', 'pr_n'],
 'weights': {'acc': 0.35, 'ifr': 0.25, 'ece': 0.2, 'auroc': 0.1, 'pr_p': 0.05, 'pr_n': 0.05},
 'extra_metrics': []}

load, process_results = exported_task_functions(SCORING, __file__)
