"""Tests of the ``openai-compatible`` backend: its error messages, and real scoring against a real server.

The slow tests start llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``, extra
``tp-harness[llama-server]``) on 127.0.0.1 serving the embedded model's GGUF, and score generate_until tasks
through it, in chat mode and in completions mode. They skip only when that server package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tp_harness.backends.openai_compatible import (
    OpenAICompatibleBackend,
    api_root,
    make_openai_compatible_backend,
)
from tp_harness.errors import BackendError

TASK = "financial_phrasebank"
KEY = "tp-harness-test-key"
KEY_ENV = "TP_TEST_SERVER_KEY"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# errors, without a server


def test_missing_model_args_are_named():
    with pytest.raises(BackendError) as err:
        make_openai_compatible_backend({"base_url": "http://127.0.0.1:1/v1"})
    assert str(err.value) == (
        "backend 'openai-compatible': missing model arg(s): model\n"
        "  to fix: pass --model-args base_url=http://127.0.0.1:8000/v1,model=NAME (the API root and the model name "
        "the server serves)")
    with pytest.raises(BackendError, match=r"missing model arg\(s\): base_url, model"):
        make_openai_compatible_backend({})


def test_no_server_reachable_says_where_and_what_to_do():
    port = _free_port()
    with pytest.raises(BackendError) as err:
        make_openai_compatible_backend({"base_url": f"http://127.0.0.1:{port}/v1", "model": "m"})
    text = str(err.value)
    assert text.startswith(f"backend 'openai-compatible': no server reachable at http://127.0.0.1:{port}/v1 (")
    assert "Connection refused" in text
    assert "to fix: start the server first" in text and "check base_url's host and port" in text


def test_base_url_may_be_the_api_root_or_an_endpoint():
    assert api_root("http://h:8000/v1") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/completions") == "http://h:8000/v1"
    assert api_root("https://h/v1/chat/completions") == "https://h/v1"
    with pytest.raises(BackendError, match=r"base_url='h:8000/v1' is not an http\(s\) URL"):
        api_root("h:8000/v1")


def test_bad_flags_and_a_missing_key_variable_are_refused_before_any_request(monkeypatch):
    base = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(BackendError, match=r"model arg chat='maybe' is not a boolean\n  to fix: pass chat=true or chat=false"):
        make_openai_compatible_backend({**base, "chat": "maybe"})
    with pytest.raises(BackendError, match=r"tokenized_requests=true needs chat=false and a local tokenizer"):
        make_openai_compatible_backend({**base, "tokenized_requests": "true"})
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(BackendError, match=r"api_key_env=MY_KEY but the environment variable MY_KEY is not set\n"
                                           r"  to fix: export MY_KEY=<your key>"):
        make_openai_compatible_backend({**base, "api_key_env": "MY_KEY"})


def test_chat_mode_refuses_loglikelihood_requests_with_the_fix():
    backend = OpenAICompatibleBackend(name="openai-compatible", lm=object(), is_chat=True, base_url="http://x/v1")
    with pytest.raises(BackendError) as err:
        backend.loglikelihood([object()])
    assert "multiple_choice (loglikelihood) scoring needs /completions with echoed log-probabilities" in str(err.value)
    assert "but chat=true" in str(err.value)
    assert "score in generate_until mode (--scoring-mode generate_until)" in str(err.value)
    assert backend.loglikelihood([]) == []


def test_the_backend_is_registered(registries):
    assert "openai-compatible" in registries.backends
    assert "base_url=" in registries.backends.get("openai-compatible").description


# ----------------------------------------------------------------------------------------------
# a real OpenAI-compatible server serving the embedded model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m llama_cpp.server`` on a free port with the embedded GGUF; yields the API root; stops it after."""
    absent = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"the OpenAI-compatible test server is not installed (missing {', '.join(absent)}): "
                    "pip install 'tp-harness[llama-server]'")
    from tp_harness.backends.embedded import ZOO, locate_gguf

    gguf = locate_gguf(ZOO["smollm2-135m"])
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
         "--n_threads_batch", "1", "--api_key", KEY],
        stdout=log, stderr=subprocess.STDOUT,
    )
    root = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(f"{root}/models", headers={"Authorization": f"Bearer {KEY}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if json.loads(response.read())["data"]:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_cli_evaluates_a_generate_until_task_through_the_chat_endpoint(server, monkeypatch, capsys):
    from tp_harness.cli import main

    monkeypatch.setenv(KEY_ENV, KEY)
    code = main(["evaluate", "--model", "openai-compatible", "--model-args",
                 f"base_url={server},model=smollm2,chat=true,num_concurrent=2,api_key_env={KEY_ENV}",
                 "--scoring-mode", "generate_until", "--task", TASK, "--limit", "3", "--no-cache", "--show-samples", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"task {TASK} (generate_until), split test, n=3, model openai-compatible" in out
    header, _sep, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    values = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert 0.0 <= float(values["IFR"]) <= 1.0 and 0.0 <= float(values["ACC"]) <= 1.0  # real metrics, computed
    assert len([line for line in out.splitlines() if line.startswith("- doc ")]) == 3


@pytest.mark.slow
def test_completions_endpoint_with_a_local_tokenizer_scores_real_generations(server, registries, monkeypatch):
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint
    from tp_harness.runner import evaluate_prompt

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default api_key_env
    tokenizer = ensure_checkpoint(ZOO["smollm2-135m"])
    _prep, ev = evaluate_prompt(task=TASK, registries=registries, model="openai-compatible",
                                model_args=f"base_url={server}/completions,model=smollm2,tokenizer={tokenizer}",
                                scoring_mode="generate_until", limit=3, cache=False)
    assert ev.n == 3 and ev.mode == "generate_until"
    assert ev.metrics["ifr"] is not None and 0.0 <= ev.metrics["ifr"] <= 1.0
    assert ev.metrics["acc"] is not None and ev.metrics["composite"] is not None
    assert all(r.response.strip() for r in ev.records)  # the server generated text for every doc
    assert ev.tokens > 0  # counted with the local tokenizer


@pytest.mark.slow
def test_a_wrong_or_missing_key_and_loglikelihood_in_chat_mode_are_clear_errors(server, registries, monkeypatch):
    from tp_harness.runner import build_backend, evaluate_prompt

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"the server at http://127\.0\.0\.1:\d+/v1 refused the API key \(HTTP 401\)"):
        build_backend("openai-compatible", f"base_url={server},model=smollm2", registries, dtype="float32",
                      batch_size="16")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(BackendError, match=r"multiple_choice \(loglikelihood\) scoring needs /completions"):
        evaluate_prompt(task=TASK, registries=registries, model="openai-compatible",
                        model_args=f"base_url={server},model=smollm2,chat=true", limit=2, cache=False)

