"""rayvllm: a Kubernetes operator that runs vLLM engines as supervised Ray jobs on KubeRay clusters."""

API_GROUP = "rayvllm.io"
API_VERSION = "v1alpha1"
KIND = "VLLMCluster"
PLURAL = "vllmclusters"
