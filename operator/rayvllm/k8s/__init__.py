"""The only code that talks to the Kubernetes API. Library exceptions become rayvllm.errors types."""
