"""tp_harness.spec.templates: the Jinja sandbox (ours and lm-eval's), the static check, and literal escaping."""

from __future__ import annotations

import random

import jinja2
import pytest

from tp_harness.spec.loader import BUILTIN_SPEC_DIR, discover_specs, load_spec
from tp_harness.spec.schema import TEMPLATE_FIELDS
from tp_harness.spec.templates import (
    SecurityError,
    TemplateProblem,
    check_template,
    escape_literal,
    install_lm_eval_sandbox,
    sandbox,
)

PLAIN = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
PIECES = ["{", "}", "%", "#", "-", "+", " ", "raw", "endraw", "{%", "%}", "{{", "}}", "{#", "#}", "'", '"', "\n", "x",
          "{% endraw %}", "{%- raw -%}", "{{ '{' }}"]


def test_escaped_text_renders_to_itself_for_thousands_of_random_strings():
    rnd = random.Random(13)
    for _ in range(5000):
        text = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 20)))
        assert PLAIN.from_string(escape_literal(text)).render() == text, text


def test_text_without_markers_is_left_readable():
    assert escape_literal("Answer {briefly} in 50% of the words #1.") == "Answer {briefly} in 50% of the words #1."
    assert escape_literal("a {{ b }}") == "a {{ '{' }}{{ '{' }} b }}"


@pytest.mark.parametrize("source", [
    "{{ cycler.__init__.__globals__.os }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ x['__globals__'] }}", "{{ x|attr('__class__') }}", "{% set y = joiner._last %}",
])
def test_static_check_refuses_underscore_names(source):
    with pytest.raises(TemplateProblem, match="refused by the template sandbox"):
        check_template(source)


def test_static_check_accepts_every_shipped_template():
    for path in discover_specs([BUILTIN_SPEC_DIR]).values():
        spec = load_spec(path)  # load_spec runs the check; this also covers tp.modes overrides
        for field in TEMPLATE_FIELDS:
            value = spec.lm_eval.get(field)
            if isinstance(value, str):
                check_template(value)


def test_lm_eval_renders_in_the_sandbox_after_install_and_keeps_its_filters():
    import lm_eval.utils as lm_utils

    install_lm_eval_sandbox()
    install_lm_eval_sandbox()  # idempotent
    assert lm_utils.env is sandbox()
    assert lm_utils.apply_template("{{ q|regex_replace('a', 'b') }}", {"q": "aa"}) == "bb"
    with pytest.raises(SecurityError):
        lm_utils.apply_template("{{ (q ~ '')['_' ~ '_class__'] }}", {"q": "x"})
    with pytest.raises(SecurityError):  # the immutable sandbox: no mutation of the doc's lists
        lm_utils.apply_template("{{ xs.append(1) }}", {"xs": []})
