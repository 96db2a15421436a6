"""Jinja templates that cannot run code: the sandbox every spec template renders in, and literal text.

Owns three things. (1) The sandboxed environment (``jinja2.sandbox.ImmutableSandboxedEnvironment``, with
lm-eval's settings: ``StrictUndefined``, trailing newlines kept, the ``regex_replace`` filter), installed in
place of lm-eval's plain ``lm_eval.utils.env`` so that every template lm-eval renders for tp-harness
(``doc_to_text``, ``doc_to_target``, ``doc_to_choice``, ``description``, ``gen_prefix``) renders in it.
(2) A static check of a template's source, run when a spec loads, that refuses the constructs the sandbox
would refuse at render time (attributes and keys starting with ``_``, such as ``cycler.__init__`` or
``''.__class__``) and templates that do not parse. (3) :func:`escape_literal`, which turns any text into a
template that renders exactly that text, with no way for the text to end the literal: an exported
instruction written by the reference LLM is data, never code. It reads no files and knows nothing of specs.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

__all__ = ["SecurityError", "TemplateProblem", "check_template", "escape_literal", "install_lm_eval_sandbox",
           "sandbox"]

log = logging.getLogger(__name__)


class TemplateProblem(ValueError):
    """A template is refused: it does not parse, or it reaches what the sandbox forbids. ``str()`` says which."""


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm-eval's ``regex_replace`` filter (``re.sub``), for templates that use it."""
    return re.sub(pattern, repl, string, count=count)


@functools.cache
def sandbox() -> ImmutableSandboxedEnvironment:
    """The process-wide sandboxed environment, configured as lm-eval configures its own.

    Immutable: templates cannot call methods that change lists or dicts (``append``, ``update``, ...), and
    cannot read attributes or keys that start with ``_`` (the route to ``__globals__`` and ``__subclasses__``).
    """
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace
    return env


def install_lm_eval_sandbox() -> None:
    """Make lm-eval render every template (``lm_eval.utils.apply_template``, its chat templates) in :func:`sandbox`.

    lm-eval 0.4 keeps one module-level ``jinja2.Environment`` (``lm_eval.utils.env``) and looks it up on
    every render; this replaces it with the sandbox, copying any filter lm-eval added. Idempotent; called
    whenever tp-harness builds an lm-eval task, and when stock lm-eval imports an exported task's module.
    """
    import lm_eval.utils as lm_utils

    env = sandbox()
    current = getattr(lm_utils, "env", None)
    if current is env:
        return
    if current is not None:
        for name, fn in current.filters.items():
            env.filters.setdefault(name, fn)
    lm_utils.env = env
    log.debug("lm-eval templates now render in jinja2's ImmutableSandboxedEnvironment")


def _unsafe_name(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("_")


def check_template(source: str) -> None:
    """Refuse a template that does not parse or that reaches what the sandbox forbids.

    Static and conservative: it walks the parsed template and refuses any attribute access (``x.__class__``),
    subscript (``x['__globals__']``) or ``attr`` filter whose name starts with ``_``. What it cannot see
    statically (a name built at render time) the sandbox still refuses when the template renders.

    :param source: the template text, e.g. a spec's ``doc_to_text``.
    :raises TemplateProblem: with the reason and, where known, the template line.
    """
    env = sandbox()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateProblem(f"not a valid Jinja template ({err.message}, template line {err.lineno})") from None
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and isinstance(node.args[0],
                                                                                                 nodes.Const):
            name = node.args[0].value
        if _unsafe_name(name):
            raise TemplateProblem(
                f"refused by the template sandbox: it reads {name!r} (template line {node.lineno}); templates may "
                "read the doc's fields, never attributes or keys that start with '_'")


def escape_literal(text: str) -> str:
    """A Jinja template that renders exactly ``text``, whatever it holds.

    Every ``{`` becomes the expression ``{{ '{' }}``, so no ``{{``, ``{%`` or ``{#`` (and so no ``{% endraw %}``)
    survives in the text: nothing in it can open a tag or end a literal block. Text without Jinja markers is
    returned unchanged, so ordinary instructions stay readable in exported YAML.
    """
    if not any(marker in text for marker in ("{{", "{%", "{#")):
        return text
    return text.replace("{", "{{ '{' }}")
