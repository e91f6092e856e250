terraform {
  # No provider: computes the task definition (worker + sidecar) so that it can be checked anywhere.
  required_version = ">= 1.3.0"
}
