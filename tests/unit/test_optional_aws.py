"""SPEC §1: AWS adapters are an optional extra; the kernel must import and run without them."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
for name in ("boto3", "botocore"):
    sys.modules[name] = None  # any import of them now fails, as without the [aws] extra
import trace_platform.cli
import trace_platform.dispatcher.app
import trace_platform.worker.app
import trace_platform.sink.app
import trace_platform.query.app
import trace_platform.runner.app
from trace_platform.adapters.queues import queue_from_settings
from trace_platform.config import Settings
from trace_platform.dispatcher.app import invoker_from_settings
from trace_platform.domain.errors import ConfigError
s = Settings.load({"home": "/nonexistent/trace"}, env={})
assert type(invoker_from_settings(s)).__name__ == "LocalRuntimeInvoker"
assert type(queue_from_settings(s, None, "postgresql://x")).__name__ == "PgQueue"
try:
    queue_from_settings(s.replace(queue_backend="sqs"), None, "postgresql://x")
except ConfigError as exc:
    assert "[aws]" in exc.detail, exc.detail
else:
    raise AssertionError("SQS without boto3 should be a clear configuration error")
try:
    invoker_from_settings(s.replace(runtime_invoker="lambda"))
except ConfigError as exc:
    assert "[aws]" in exc.detail, exc.detail
else:
    raise AssertionError("Lambda without boto3 should be a clear configuration error")
from trace_platform.adapters.local_keys import LocalKeyRing
try:
    LocalKeyRing.from_document({"current": {"kid": "k", "alg": "ES256", "kms_key_id": "x"}})
except ConfigError as exc:
    assert "[aws]" in exc.detail, exc.detail
else:
    raise AssertionError("a KMS key without boto3 should be a clear configuration error")
print("ok")
"""


def test_the_kernel_imports_and_wires_up_without_the_aws_extra() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
