"""The control-loop benchmark (`make bench`): the operator against a loopback control plane with kwok's
nodes and no Ray, beside KubeRay. See bench/README.md for what is measured and how."""
