"""The ``vllm`` backend: settings passed through, data parallelism refused, one engine per model per process.

The engine test needs vllm and a CUDA GPU and skips cleanly without them (``benchmarks/gpu_check.sh`` runs the
backend end to end on a GPU machine).
"""

from __future__ import annotations

import pytest

from tp_harness.backends import vllm
from tp_harness.errors import BackendError


def test_model_args_win_and_settings_pass_through():
    args = vllm.vllm_args({"pretrained": "/m", "tensor_parallel_size": "2", "gpu_memory_utilization": "0.8",
                           "max_model_len": "4096", "dtype": "bfloat16"}, dtype="auto", batch_size="auto")
    assert args == {"pretrained": "/m", "tensor_parallel_size": "2", "gpu_memory_utilization": "0.8",
                    "max_model_len": "4096", "dtype": "bfloat16", "batch_size": "auto"}
    assert vllm.engine_key(args) == vllm.engine_key(dict(reversed(list(args.items()))))
    assert vllm.engine_key(args) != vllm.engine_key({**args, "max_model_len": "2048"})


def test_data_parallel_inside_the_harness_is_refused_with_the_alternatives():
    with pytest.raises(BackendError) as err:
        vllm.vllm_args({"pretrained": "/m", "data_parallel_size": "2"}, dtype="auto", batch_size="auto")
    text = str(err.value)
    assert "data_parallel_size='2' is not supported inside tp-harness" in text
    assert "tensor_parallel_size=N" in text and "--executor ray" in text and "vllm serve --data-parallel-size" in text
    assert vllm.vllm_args({"pretrained": "/m", "data_parallel_size": "1"}, dtype="auto", batch_size=8) == {
        "pretrained": "/m", "dtype": "auto", "batch_size": 8}
    with pytest.raises(BackendError, match="no model given"):
        vllm.vllm_args({}, dtype="auto", batch_size=8)


@pytest.mark.slow
def test_one_engine_per_model_per_process():
    pytest.importorskip("vllm")
    if not vllm.cuda_available():
        pytest.skip("needs a CUDA GPU (vLLM); benchmarks/gpu_check.sh runs this on a GPU machine")
    from tp_harness.backends.embedded import ZOO, ensure_checkpoint

    checkpoint = str(ensure_checkpoint(ZOO["smollm2-135m"]))
    before = vllm.LOAD_COUNT["engines"]
    args = {"pretrained": checkpoint, "gpu_memory_utilization": "0.3", "max_model_len": "2048"}
    first = vllm.make_vllm_backend(dict(args), dtype="float32", batch_size="auto")
    second = vllm.make_vllm_backend(dict(args), dtype="float32", batch_size="auto")
    assert first.lm is second.lm and first is not second
    assert vllm.LOAD_COUNT["engines"] == before + 1
