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
 'output_type': 'generate_until',
 'lm_eval': {'output_type': 'generate_until',
             'doc_to_text': 'Sentence: {{sentence}}\n'
                            'Reply with exactly two lines:\n'
                            'Answer: <negative, neutral or positive>\n'
                            'Confidence: <0-100>%',
             'doc_to_choice': ['negative', 'neutral', 'positive'],
             'doc_to_target': '{{label}}',
             'target_delimiter': ' ',
             'generation_kwargs': {'until': ['\n\n', '<|im_end|>'], 'max_gen_toks': 24, 'do_sample': False},
             'num_fewshot': 1,
             'fewshot_config': {'doc_to_target': 'Answer: {{label}}\nConfidence: 90%',
                                'target_delimiter': '\n',
                                'sampler': 'first_n',
                                'samples': [{'sentence': "The unit 's clients are mainly in the field of "
                                                         'specialist convenience goods , as well as in the '
                                                         'textile , shoe and furniture businesses .',
                                             'label': 'neutral'}]}},
 'answer_format': {'parser': 'label_confidence', 'labels': ['negative', 'neutral', 'positive']},
 'metrics': ['acc', 'ifr', 'ece', 'auroc', 'pr_p', 'pr_n'],
 'weights': {'acc': 0.35, 'ifr': 0.25, 'ece': 0.2, 'auroc': 0.1, 'pr_p': 0.05, 'pr_n': 0.05},
 'extra_metrics': []}

load, process_results = exported_task_functions(SCORING, __file__)
