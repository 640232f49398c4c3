"""Where engines land inside a Ray cluster: the names the RayCluster builder, the engine's job and the
supervisor's slot count must agree on. Not part of the API."""

ENGINE_SLOT_RESOURCE = "rayvllm_engine_slots"
"""Ray custom resource on GPU workers (count = gpusPerWorker). Each engine's Ray job asks for
`engine_slots_per_job` of it through entrypoint_resources, which puts the vLLM API server on a GPU worker
without taking a GPU away from vLLM's placement group."""
