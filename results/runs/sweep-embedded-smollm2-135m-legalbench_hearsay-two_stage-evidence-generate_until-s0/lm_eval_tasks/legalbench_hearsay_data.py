"""Docs and scoring of the task 'legalbench_hearsay' exported by tp-harness, for stock lm-eval.

``load`` is the YAML's ``custom_dataset`` (the exact test docs tp-harness scored, ``data/legalbench_hearsay.test.jsonl``);
``process_results`` is the YAML's ``process_results`` (lm-eval's answers -> tp-harness sample records). Both
come from ``tp_harness.lm_eval_bridge``, which also registers tp-harness's metrics (``ece``, ``auroc``,
``tp_composite``, ...) with lm-eval. Needs tp-harness installed in lm-eval's environment.
"""
try:
    from tp_harness.lm_eval_bridge import exported_task_functions
except ImportError as err:  # the YAML's metric_list names tp-harness metrics
    raise ImportError(f"task 'legalbench_hearsay' is scored with tp-harness metrics: install tp-harness ({err})") from err

#: how tp-harness scores this task: mode, lm-eval fields, answer parser, metrics, composite weights
SCORING = {'task': 'legalbench_hearsay',
 'output_type': 'generate_until',
 'lm_eval': {'output_type': 'generate_until',
             'doc_to_text': 'Evidence: {{text}}\n'
                            'Is this evidence hearsay? Reply with exactly two lines:\n'
                            'Answer: <Yes or No>\n'
                            'Confidence: <0-100>%',
             'doc_to_choice': ['No', 'Yes'],
             'doc_to_target': '{{label}}',
             'target_delimiter': ' ',
             'generation_kwargs': {'until': ['\n\n', '<|im_end|>'], 'max_gen_toks': 24, 'do_sample': False},
             'num_fewshot': 1,
             'fewshot_config': {'doc_to_target': 'Answer: {{label}}\nConfidence: 90%',
                                'target_delimiter': '\n',
                                'sampler': 'first_n',
                                'samples': [{'label': 'Yes',
                                             'text': 'To prove that the Denise and Tom were married, the '
                                                     'fact that Amber sent them a card congratulating them '
                                                     'on their wedding.',
                                             'slice': 'Standard hearsay'}]}},
 'answer_format': {'parser': 'label_confidence', 'labels': ['Yes', 'No']},
 'metrics': ['acc', 'ifr', 'ece', 'auroc', 'pr_p', 'pr_n'],
 'weights': {'acc': 0.35, 'ifr': 0.25, 'ece': 0.2, 'auroc': 0.1, 'pr_p': 0.05, 'pr_n': 0.05},
 'extra_metrics': []}

load, process_results = exported_task_functions(SCORING, __file__)
