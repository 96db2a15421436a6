"""Tests of the ``openai-compatible`` backend: its error messages, and real scoring against a real server.

The slow tests start a real OpenAI-compatible server on 127.0.0.1 and score generate_until tasks through it:
- ``transformers serve`` (extra ``tp-harness[serving]``, part of ``[test]``; wheels only, no compiler) serving the
  embedded model's converted checkpoint, offline. Its greedy generations must equal the ``hf`` backend's on the
  same docs, since it runs the same checkpoint with the same chat template.
- ``python -m llama_cpp.server`` (extra ``tp-harness[llama-server]``, which builds llama-cpp-python from source and
  which no README command installs) serving the GGUF, with an API key. Its tests skip, saying why, without it.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tp_harness.backends.openai_compatible import (
    OpenAICompatibleBackend,
    api_root,
    check_server,
    cut_at_stop,
    make_openai_compatible_backend,
)
from tp_harness.errors import BackendError

TASK = "financial_phrasebank"
KEY = "tp-harness-test-key"
KEY_ENV = "TP_TEST_SERVER_KEY"
LLAMA_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
TRANSFORMERS_SERVER_MODULES = ("fastapi", "uvicorn", "openai")


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
    assert "score in generate_until mode (--output-type generate_until)" in str(err.value)
    assert backend.loglikelihood([]) == []


def test_the_backend_is_registered(registries):
    assert "openai-compatible" in registries.backends
    assert "base_url=" in registries.backends.get("openai-compatible").description


def test_generations_are_cut_at_the_first_stop_sequence():
    assert cut_at_stop("Answer: B\n\nQuestion: next", ["\n\n", "Question:"]) == "Answer: B"
    assert cut_at_stop("Answer: B", ["\n\n"]) == "Answer: B"
    assert cut_at_stop("abc", []) == "abc"
    assert cut_at_stop("1. 1\n2. 2\n5", ["5"]) == "1. 1\n2. 2\n"


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_refused_key_is_a_clear_error():
    """A server that answers 401 (a stdlib HTTP server standing in; the llama.cpp test below uses a real one)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(BackendError, match=r"refused the API key \(HTTP 401\)"):
            check_server(root, model="m", headers={"Authorization": "Bearer wrong"})
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------------------------
# real OpenAI-compatible servers serving the embedded model


def _wait_for_server(proc: subprocess.Popen, root: str, log_path: Path, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{root}/models", headers=headers), timeout=5) as r:
                if json.loads(r.read())["data"]:
                    return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not answer in 180 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    """``transformers serve <checkpoint>`` on a free port, offline, fp32 on the CPU; yields (API root, model name)."""
    absent = [m for m in TRANSFORMERS_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"transformers' OpenAI-compatible server is not installed (missing {', '.join(absent)}): "
                    "pip install 'tp-harness[serving]'")
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint

    checkpoint = str(ensure_checkpoint(ZOO["smollm2-135m"]))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("transformers-serve") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
             "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype",
             "float32", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    root = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for_server(proc, root, log_path, {})
        yield root, checkpoint
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """``python -m llama_cpp.server`` on a free port with the embedded GGUF and an API key; yields the API root."""
    absent = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"llama-cpp-python's server is not installed (missing {', '.join(absent)}): "
                    "pip install 'tp-harness[llama-server]' (builds llama-cpp-python from source)")
    from tp_harness.backends.embedded import ZOO, locate_gguf

    gguf = locate_gguf(ZOO["smollm2-135m"])
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
             "--n_threads_batch", "1", "--api_key", KEY],
            stdout=log, stderr=subprocess.STDOUT,
        )
    root = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for_server(proc, root, log_path, {"Authorization": f"Bearer {KEY}"})
        yield root
    finally:
        _stop(proc)


@pytest.mark.slow
def test_cli_evaluates_a_generate_until_task_through_the_chat_endpoint(transformers_server, capsys):
    from tp_harness.entrypoints.cli import main

    root, model = transformers_server
    code = main(["evaluate", "--model", "openai-compatible", "--model-args",
                 f"base_url={root},model={model},chat=true,num_concurrent=2",
                 "--scoring-mode", "generate_until", "--task", TASK, "--limit", "3", "--no-cache", "--show-samples", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"task {TASK} (generate_until), split test, n=3, model openai-compatible" in out
    header, _sep, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    values = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert 0.0 <= float(values["IFR"]) <= 1.0 and 0.0 <= float(values["ACC"]) <= 1.0  # real metrics, computed
    assert len([line for line in out.splitlines() if line.startswith("- doc ")]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("chat", [True, False], ids=["chat-endpoint", "completions-endpoint"])
def test_greedy_generations_through_the_server_equal_the_hf_backend(transformers_server, registries, chat):
    """The same checkpoint, chat template and greedy decoding: the served answers are the ``hf`` backend's, word for
    word, on the same docs (``/chat/completions`` renders the template on the server; ``/completions`` with
    ``tokenizer=`` renders it here)."""
    from tp_harness.runs.runner import evaluate_prompt

    root, model = transformers_server
    args = f"base_url={root},model={model}," + ("chat=true" if chat else f"chat=false,tokenizer={model}")
    _prep, served = evaluate_prompt(task=TASK, registries=registries, model="openai-compatible", model_args=args,
                                    scoring_mode="generate_until", limit=4, cache=False)
    _prep, local = evaluate_prompt(task=TASK, registries=registries, model="hf", model_args=f"pretrained={model}",
                                   scoring_mode="generate_until", limit=4, cache=False)
    assert [r.doc_id for r in served.records] == [r.doc_id for r in local.records]
    assert all(r.response.strip() for r in served.records)  # the server generated text for every doc
    assert [r.response for r in served.records] == [r.response for r in local.records]
    assert served.metrics == local.metrics
    if not chat:
        assert served.tokens > 0  # counted with the local tokenizer


@pytest.mark.slow
def test_loglikelihood_in_chat_mode_is_a_clear_error(transformers_server, registries):
    from tp_harness.runs.runner import evaluate_prompt

    root, model = transformers_server
    with pytest.raises(BackendError, match=r"multiple_choice \(loglikelihood\) scoring needs /completions"):
        evaluate_prompt(task=TASK, registries=registries, model="openai-compatible",
                        model_args=f"base_url={root},model={model},chat=true", limit=2, cache=False)


@pytest.mark.slow
def test_llama_server_with_an_api_key(llama_server, registries, monkeypatch):
    """llama.cpp's server (optional extra): real generations with a key from ``api_key_env``; a missing key is a
    clear error."""
    from tp_harness.runs.runner import build_backend, evaluate_prompt

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match=r"the server at http://127\.0\.0\.1:\d+/v1 refused the API key \(HTTP 401\)"):
        build_backend("openai-compatible", f"base_url={llama_server},model=smollm2", registries, dtype="float32",
                      batch_size="16")
    monkeypatch.setenv(KEY_ENV, KEY)
    _prep, ev = evaluate_prompt(task=TASK, registries=registries, model="openai-compatible",
                                model_args=f"base_url={llama_server},model=smollm2,chat=true,api_key_env={KEY_ENV}",
                                scoring_mode="generate_until", limit=3, cache=False)
    assert ev.n == 3 and ev.metrics["ifr"] is not None and 0.0 <= ev.metrics["ifr"] <= 1.0
    assert all(r.response.strip() for r in ev.records)
