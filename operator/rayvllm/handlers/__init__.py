"""kopf entry point: `kopf run -m rayvllm.handlers`. Importing this package registers every handler."""

from rayvllm.handlers import children as children
from rayvllm.handlers import lifecycle as lifecycle
from rayvllm.handlers import vllmcluster as vllmcluster
